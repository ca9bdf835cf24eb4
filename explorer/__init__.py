"""The SANA-WM explorer: drive a world model with the keyboard, live (`sana-wm explore`).

- `client`: `WorldClient` API, `LocalClient` (in-process model); `remote.RemoteClient` talks to a server;
- `app`: the loop (`Explorer`, `ExploreOptions`, `run_explorer`);
- `worker`: the generation thread and its bounded frame queue;
- `display` / `hud`: moderngl drawing and the overlay; `keys`: held keys and scripted input;
- `recorder`: MP4 + replayable sidecar of a session.

Importing `explorer` imports neither torch nor pygame / moderngl: the names below load on first use, so a
thin client (or a server importing `explorer.client`) pays only for what it touches.
"""
from __future__ import annotations

import importlib

_LAZY = {
    "WorldClient": "explorer.client",
    "LocalClient": "explorer.client",
    "SessionInfo": "explorer.client",
    "StepResult": "explorer.client",
    "Explorer": "explorer.app",
    "ExploreOptions": "explorer.app",
    "run_explorer": "explorer.app",
}

__all__ = ["ExploreOptions", "Explorer", "LocalClient", "SessionInfo", "StepResult", "WorldClient",
           "run_explorer"]


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'explorer' has no attribute {name!r}")
