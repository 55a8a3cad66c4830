"""nonstop.handover"""
