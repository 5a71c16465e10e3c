"""linecam.backends"""
