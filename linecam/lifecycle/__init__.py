"""linecam.lifecycle"""
