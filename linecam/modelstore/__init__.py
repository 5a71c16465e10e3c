"""The model store: published versions, the CURRENT pointer and the checks a loader runs (read side)."""
