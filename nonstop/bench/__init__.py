"""nonstop.bench"""
