"""linecam.runtime"""
