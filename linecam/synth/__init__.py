"""linecam.synth: the blow-fill-seal vial-strip renderer, its defects, the dataset writer, the linecam layout
reader/checker, the contact sheet and the synthetic camera.

Modules are imported on demand (``from linecam.synth.camera import SyntheticCamera``) so that a process which only
needs the layout reader does not pay for the renderer.
"""
