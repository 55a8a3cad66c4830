"""nonstop.media"""
