"""nonstop.protocol"""
