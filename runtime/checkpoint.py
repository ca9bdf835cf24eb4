"""Loading official SANA-WM checkpoints (and this project's) into the model (spec section 7).

Accepted: `.safetensors` (memory-mapped, read tensor by tensor) and `.pt` / `.pth` (torch.load with mmap),
optionally wrapped as `{"generator": state}` or `{"state_dict": state}`, keys optionally prefixed `model.`.
`pos_embed` (a buffer of the Sana base class that wan_rope does not use) is dropped. Every mismatch is
reported by key name; loading never holds two copies of the weights.
"""
from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

DROPPED_KEYS = ("pos_embed",)


class CheckpointError(RuntimeError):
    """A checkpoint cannot be loaded; the message says which file and which keys."""


def _safetensors_header(path: Path) -> dict:
    size = path.stat().st_size
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise CheckpointError(f"{path}: not a safetensors file (shorter than its 8-byte header length)")
        (n,) = struct.unpack("<Q", raw)
        if n <= 0 or n > min(size - 8, 100_000_000):
            raise CheckpointError(f"{path}: not a safetensors file (header length {n} does not fit the "
                                  f"file of {size} bytes)")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"{path}: corrupt safetensors header ({exc})") from None
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + n + end > size:
        raise CheckpointError(f"{path}: truncated: the header describes {8 + n + end} bytes but the file has "
                              f"{size}")
    return header


def checkpoint_shapes(path: str | Path) -> dict[str, tuple[tuple[int, ...], str]]:
    """{key: (shape, dtype)} of a checkpoint without loading its tensors (safetensors) or via mmap (.pt)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        header = _safetensors_header(path)
        return {k: (tuple(v["shape"]), v["dtype"]) for k, v in header.items() if k != "__metadata__"}
    return {k: (tuple(t.shape), str(t.dtype).replace("torch.", "")) for k, t in iter_checkpoint(path)}


def _normalise_key(key: str, strip_model_prefix: bool) -> str:
    return key[len("model."):] if strip_model_prefix and key.startswith("model.") else key


def iter_checkpoint(path: str | Path) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (official key, tensor) pairs one at a time, wrappers and prefixes removed, pos_embed dropped."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if path.suffix == ".safetensors":
        header = _safetensors_header(path)
        from safetensors import safe_open

        keys = [k for k in header if k != "__metadata__"]
        strip = bool(keys) and all(k.startswith("model.") for k in keys)
        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                for key in keys:
                    name = _normalise_key(key, strip)
                    if name not in DROPPED_KEYS:
                        yield name, f.get_tensor(key)
        except (OSError, RuntimeError, ValueError) as exc:
            if isinstance(exc, CheckpointError):
                raise
            raise CheckpointError(f"{path}: unreadable safetensors file ({exc})") from None
        return
    if path.suffix not in (".pt", ".pth", ".bin", ".ckpt"):
        raise CheckpointError(f"{path}: unknown checkpoint format {path.suffix!r} "
                              "(expected .safetensors, .pt or .pth)")
    try:
        obj = torch.load(str(path), map_location="cpu", mmap=True, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for corrupt / non-zip / truncated files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({first})") from None
    strip = True
    if isinstance(obj, dict) and "generator" in obj and isinstance(obj["generator"], dict):
        obj = obj["generator"]
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
        strip = False   # the official loader strips `model.` only without a state_dict wrapper
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: does not hold a state dict of tensors "
                              "(expected a dict, optionally under 'generator' or 'state_dict')")
    for key, tensor in obj.items():
        name = _normalise_key(key, strip)
        if name not in DROPPED_KEYS:
            yield name, tensor


def _describe(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def load_checkpoint(model: nn.Module, path: str | Path, *, strict: bool = True) -> dict:
    """Copy a checkpoint's tensors into `model` one at a time (cast to each parameter's dtype).

    Raises CheckpointError naming missing, unexpected and wrongly shaped keys (with strict=True, before any
    weight is changed). Returns {"loaded": n, "missing": [...], "unexpected": [...]}.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    own = model.state_dict(keep_vars=True)
    if path.suffix == ".safetensors" and any(k.endswith(".weight_scale") for k in checkpoint_shapes(path)):
        return _load_quantized(model, path, strict)
    if path.suffix == ".safetensors":
        raw = checkpoint_shapes(path)
        strip = bool(raw) and all(k.startswith("model.") for k in raw)
        theirs = {_normalise_key(k, strip): v[0] for k, v in raw.items()}
        theirs = {k: v for k, v in theirs.items() if k not in DROPPED_KEYS}
        _check_layout(path, own, theirs, strict)
        tensors = iter_checkpoint(path)
    else:
        items = dict(iter_checkpoint(path))   # mmap-backed: no copy of the data yet
        theirs = {k: tuple(v.shape) for k, v in items.items()}
        _check_layout(path, own, theirs, strict)
        tensors = iter(items.items())
    loaded, unexpected = 0, []
    with torch.no_grad():
        for key, tensor in tensors:
            target = own.get(key)
            if target is None:
                unexpected.append(key)
                continue
            target.copy_(tensor.to(target.dtype))
            loaded += 1
    missing = sorted(set(own) - set(theirs))
    return {"loaded": loaded, "missing": missing, "unexpected": unexpected}


def _load_quantized(model: nn.Module, path: Path, strict: bool) -> dict:
    """NVFP4 / FP8 checkpoints (modelopt layout): quantized modules are built straight from the packed tensors,
    never through a bf16 copy of the weights."""
    from quant import load_quantized_state_dict

    state = dict(iter_checkpoint(path))          # memory-mapped tensors
    try:
        load_quantized_state_dict(model, state, strict=strict)
    except (RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0]
        raise CheckpointError(f"{path}: does not match the model: {first}") from None
    return {"loaded": len(state), "missing": [], "unexpected": []}


def _check_layout(path: Path, own: dict, theirs: dict[str, tuple], strict: bool) -> None:
    missing = sorted(set(own) - set(theirs))
    unexpected = sorted(set(theirs) - set(own))
    wrong = sorted(k for k in set(own) & set(theirs) if tuple(own[k].shape) != tuple(theirs[k]))
    problems = []
    if wrong:
        problems.append("wrong shape: " + _describe(
            [f"{k} (checkpoint {list(theirs[k])}, model {list(own[k].shape)})" for k in wrong], 4))
    if strict and missing:
        problems.append(f"missing {len(missing)} keys: {_describe(missing)}")
    if strict and unexpected:
        problems.append(f"unexpected {len(unexpected)} keys: {_describe(unexpected)}")
    if problems:
        raise CheckpointError(f"{path}: does not match the model: " + "; ".join(problems))


def save_checkpoint(model: nn.Module, path: str | Path, metadata: dict | None = None) -> Path:
    """Write the model's state dict (official key layout) as safetensors."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    meta = {k: str(v) for k, v in (metadata or {}).items()}
    tmp = path.with_suffix(path.suffix + ".tmp")
    save_file(state, str(tmp), metadata=meta)
    tmp.replace(path)
    return path
