"""SANA-WM inference runtime.

Importing `runtime` does not import torch: the camera math (`runtime.camera`) and the configs serve the
explorer client on machines without the model. The model entry points load lazily.
"""
__version__ = "0.1.0"

_LAZY = {
    "build_model": "runtime.model",
    "SanaWorldModel": "runtime.model",
    "load_checkpoint": "runtime.checkpoint",
    "CheckpointError": "runtime.checkpoint",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'runtime' has no attribute {name!r}")
