"""linecam: real-time camera line inspection built on GRD-Net."""

__version__ = "0.1.0"
