"""Camera sources for acquire: one ``FrameSource`` protocol, one module per kind (genicam, synthetic, folder)."""
