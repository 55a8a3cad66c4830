"""nonstop.api"""
