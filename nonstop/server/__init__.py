"""nonstop.server"""
