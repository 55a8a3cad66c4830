"""nonstop.cluster"""
