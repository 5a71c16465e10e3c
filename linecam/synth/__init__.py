"""linecam.synth"""
