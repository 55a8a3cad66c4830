"""nonstop.master"""
