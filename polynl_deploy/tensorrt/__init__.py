"""TensorRT side of the toolkit: engine build settings, optimization profiles, precision conversion,
the engine builder (full TensorRT with the PolyNL plugin, or TensorRT for RTX ahead of time) and a runner.

Nothing here is imported by ``polynl --help`` or CPU-only runs; TensorRT itself is imported only
inside the functions that need it.
"""
