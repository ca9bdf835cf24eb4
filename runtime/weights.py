"""Weight resolution: one function that turns a weight reference into a local path.

A reference is either a local path (file or folder, returned as is, never touches the network) or
`hf://<org>/<repo>[/<path inside the repo>]`. Hub references are looked up in a local cache folder first
(`$SANA_WM_HOME/<org>/<repo>/<path>`, default `~/.cache/sana-wm/...`), and downloaded there only when the
caller allows it (`allow_download=True`) or, when the caller leaves it open (`None`), when the environment says
`SANA_WM_ALLOW_DOWNLOAD=1`. Anything else raises `MissingWeightsError` with a one-line message that names the
component, the reference and where to put the files.

No torch here: `sana-wm info` and the explorer client read the status table on machines without the model.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

ENV_ALLOW_DOWNLOAD = "SANA_WM_ALLOW_DOWNLOAD"
"""Environment variable: `1` lets `resolve_weights` download hub references when the caller passes None."""
ENV_HOME = "SANA_WM_HOME"
"""Environment variable: root of the local weight cache (default `~/.cache/sana-wm`)."""
HUB_SCHEME = "hf://"

# Official references of the named components (spec section 7.1).
OFFICIAL_WEIGHTS: dict[str, str] = {
    "gemma-2-2b-it": "hf://Efficient-Large-Model/gemma-2-2b-it",
    "ltx2": "hf://Efficient-Large-Model/SANA-WM_bidirectional/vae",
    "ltx2-causal": "hf://Efficient-Large-Model/SANA-WM_streaming/ltx2_causal_vae",
}
"""Component name (as written in a ModelConfig's `text_encoder` / `vae`) -> weight reference."""

GENERATOR_WEIGHTS: dict[str, str] = {
    "sana-wm-streaming": "hf://Efficient-Large-Model/SANA-WM_streaming/sana_dit/model.pt",
    "sana-wm-bidirectional": "hf://Efficient-Large-Model/SANA-WM_bidirectional/dit/sana_wm_1600m_720p.safetensors",
}
"""Config preset name -> official generator (DiT) checkpoint reference."""

BUILTIN_COMPONENTS: dict[str, str] = {
    "tiny-hash": "built in (hashed UTF-8 bytes, no weights)",
    "tiny-world": "built in (tiny autoencoder of the runtime package)",
}
"""Component names that need no weight download, with the `where` text `component_status` reports."""

_TRUE = {"1", "true", "yes", "on"}
_DOWNLOAD_MARKER = ".sana-wm-downloading"


class MissingWeightsError(FileNotFoundError):
    """A component's weights are not on this machine; the message is one line saying what to do.

    Attributes:
        what: the component, e.g. "video autoencoder (ltx2-causal)".
        ref: the reference that was asked for.
        where: the local path that was checked (where the files should go).
    """

    def __init__(self, what: str, ref: str, where: str | Path, reason: str = "") -> None:
        self.what, self.ref, self.where, self.reason = what, ref, str(where), reason
        if ref.startswith(HUB_SCHEME):
            hub = parse_hub_ref(ref)
            depth = len(hub.path.split("/")) if hub.path else 0
            repo_dir = Path(where).parents[depth - 1] if depth else Path(where)
            include = f" --include '{hub.path}*'" if hub.path else ""
            msg = (f"missing weights for {what}: {ref} is not in the local cache at {where}; put the files there "
                   f"(e.g. `hf download {hub.repo_id}{include} --local-dir {repo_dir}`) or set "
                   f"{ENV_ALLOW_DOWNLOAD}=1 to download them")
        else:
            msg = f"missing weights for {what}: no file or folder at {where} (from reference {ref!r})"
        if reason:
            msg += f" ({reason})"
        super().__init__(" ".join(msg.split()))

    def __str__(self) -> str:  # OSError's default __str__ would prefix errno fields
        return self.args[0]

    def __reduce__(self):  # keeps the error picklable across worker processes
        return type(self), (self.what, self.ref, self.where, self.reason)


class IncompatibleWeightsError(ValueError):
    """Weights were found but do not fit the model (missing keys, shape mismatch, wrong width); one line."""


@dataclass(frozen=True)
class HubRef:
    """A parsed `hf://org/repo[/path]` reference."""

    org: str
    repo: str
    path: str
    """Path inside the repository ('' for the whole repository), '/'-separated."""

    @property
    def repo_id(self) -> str:
        return f"{self.org}/{self.repo}"


def parse_hub_ref(ref: str) -> HubRef:
    """Parse `hf://org/repo[/sub/path]`; raises ValueError for anything else."""
    if not ref.startswith(HUB_SCHEME):
        raise ValueError(f"not a hub reference (expected {HUB_SCHEME}org/repo[/path]): {ref!r}")
    parts = [p for p in ref[len(HUB_SCHEME):].split("/") if p]
    if len(parts) < 2 or any(p in (".", "..") for p in parts):
        raise ValueError(f"bad hub reference {ref!r}: expected {HUB_SCHEME}org/repo[/path]")
    return HubRef(parts[0], parts[1], "/".join(parts[2:]))


def weights_home() -> Path:
    """Root of the local weight cache: `$SANA_WM_HOME`, default `~/.cache/sana-wm`."""
    home = os.environ.get(ENV_HOME, "").strip()
    return Path(home).expanduser() if home else Path.home() / ".cache" / "sana-wm"


def cache_path(hub: HubRef) -> Path:
    """Where a hub reference lives in the local cache: `<home>/<org>/<repo>/<path>`."""
    repo_dir = weights_home() / hub.org / hub.repo
    return repo_dir.joinpath(*hub.path.split("/")) if hub.path else repo_dir


def download_allowed(allow_download: bool | None = None) -> bool:
    """The caller's choice when given, else `SANA_WM_ALLOW_DOWNLOAD=1` in the environment."""
    if allow_download is not None:
        return bool(allow_download)
    return os.environ.get(ENV_ALLOW_DOWNLOAD, "").strip().lower() in _TRUE


def resolve_weights(ref: str | Path, *, what: str, allow_download: bool | None = None) -> Path:
    """Resolve a weight reference to a local file or folder.

    Args:
        ref: a local path, or `hf://org/repo[/path]`.
        what: the component, for the error message ("text encoder (gemma-2-2b-it)").
        allow_download: True / False decide; None defers to `SANA_WM_ALLOW_DOWNLOAD`.

    Returns:
        The local path (a file or a folder).

    Raises:
        MissingWeightsError: nothing at the path, or a hub reference neither cached nor downloadable.
        ValueError: a malformed hub reference.
    """
    text = str(ref)
    if not text.startswith(HUB_SCHEME):
        path = Path(text).expanduser()
        if not path.exists():
            raise MissingWeightsError(what, text, path)
        return path.resolve()
    hub = parse_hub_ref(text)
    target = cache_path(hub)
    if _present(target):
        return target
    if not download_allowed(allow_download):
        raise MissingWeightsError(what, text, target)
    return _download(hub, target, what=what, ref=text)


def _marker(target: Path) -> Path:
    return target.parent / f"{target.name}{_DOWNLOAD_MARKER}"


def _present(target: Path) -> bool:
    """Present = exists, is not an empty folder, and no download into it was interrupted."""
    if not target.exists() or _marker(target).exists():
        return False
    if target.is_dir():
        return any(target.iterdir())
    return True


def _download(hub: HubRef, target: Path, *, what: str, ref: str) -> Path:
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise MissingWeightsError(what, ref, target, "downloads need the huggingface_hub package") from None
    repo_dir = weights_home() / hub.org / hub.repo
    target.parent.mkdir(parents=True, exist_ok=True)
    marker = _marker(target)
    marker.touch()
    # One pattern pair covers both a file and a folder: fnmatch's '*' also crosses '/'.
    patterns = [hub.path, f"{hub.path}/*"] if hub.path else None
    try:
        snapshot_download(hub.repo_id, local_dir=str(repo_dir), allow_patterns=patterns)
    except Exception as exc:  # network, auth, missing repo: all end as "weights missing", with the cause
        raise MissingWeightsError(what, ref, target, f"download failed: {type(exc).__name__}: {exc}") from exc
    if not target.exists():
        marker.unlink(missing_ok=True)
        raise MissingWeightsError(what, ref, target, f"{hub.repo_id} has no {hub.path!r}")
    marker.unlink(missing_ok=True)
    return target


def clear_cached(ref: str) -> None:
    """Delete a hub reference's files from the local cache (for re-downloads); local paths are refused."""
    target = cache_path(parse_hub_ref(ref))
    if target.is_dir():
        shutil.rmtree(target)
    elif target.exists():
        target.unlink()
    _marker(target).unlink(missing_ok=True)


class ComponentStatus(NamedTuple):
    """One row of `sana-wm info`."""

    component: str
    """What it is: "generator", "text encoder", "video autoencoder"."""
    ref: str
    """The name or reference the config asks for, resolved to a reference where one is known."""
    present: bool
    """True when the weights are on this machine (or none are needed)."""
    where: str
    """The local path checked, or why no path is needed."""


def component_ref(name: str) -> str:
    """A component name from a config ("ltx2-causal") to its weight reference; paths and refs pass through."""
    return OFFICIAL_WEIGHTS.get(name, name)


def component_status(config) -> list[ComponentStatus]:
    """Weight presence of every component a config needs (no network, no torch).

    Args:
        config: a `runtime.config.ModelConfig` (only `.name`, `.text_encoder` and `.vae` are read).

    Returns:
        Rows for the generator (only where an official checkpoint is known for the preset), the text
        encoder and the video autoencoder.
    """
    rows = []
    generator = GENERATOR_WEIGHTS.get(config.name)
    if generator is not None:
        rows.append(_status("generator", generator))
    rows.append(_status("text encoder", config.text_encoder))
    rows.append(_status("video autoencoder", config.vae))
    return rows


def _status(component: str, name: str) -> ComponentStatus:
    if name in BUILTIN_COMPONENTS:
        return ComponentStatus(component, name, True, BUILTIN_COMPONENTS[name])
    ref = component_ref(name)
    if ref.startswith(HUB_SCHEME):
        try:
            target = cache_path(parse_hub_ref(ref))
        except ValueError as exc:
            return ComponentStatus(component, ref, False, str(exc))
        return ComponentStatus(component, ref, _present(target), str(target))
    path = Path(ref).expanduser()
    if path.exists():
        return ComponentStatus(component, ref, True, str(path.resolve()))
    return ComponentStatus(component, ref, False, f"{path} (not found; not a known component name either)")


# Stage-2 refiner (spec 6.5, 7.1) ------------------------------------------------------------------------------
REFINER_WEIGHTS: dict[str, tuple[str, str]] = {
    "sana-wm-bidirectional": ("hf://Efficient-Large-Model/SANA-WM_bidirectional/refiner",
                              "hf://Efficient-Large-Model/SANA-WM_bidirectional/refiner/text_encoder"),
    "sana-wm-streaming": ("hf://Efficient-Large-Model/SANA-WM_streaming/refiner_diffusers",
                          "hf://Efficient-Large-Model/SANA-WM_streaming/gemma3_12b"),
}
"""Config preset -> (refiner root holding `transformer/` and `connectors/`, its Gemma-3 text encoder folder)."""


def resolve_refiner_weights(root: str | Path, text_encoder: str | Path | None = None, *,
                            allow_download: bool | None = None) -> dict[str, Path]:
    """Local folders of the LTX-2 refiner: {'transformer', 'connectors', 'text_encoder'}.

    Args:
        root: local folder or `hf://` reference holding `transformer/` and `connectors/` (diffusers layout).
        text_encoder: the Gemma-3 folder; None looks for `<root>/text_encoder` (bidirectional release), then
            a sibling `gemma3_12b/` (streaming release bundle).
        allow_download: as for `resolve_weights`.

    Raises:
        MissingWeightsError: one error naming every missing folder.
    """
    text = str(root).rstrip("/")
    hub = text.startswith(HUB_SCHEME)

    def join(base: str, name: str) -> str:
        return f"{base}/{name}" if hub else str(Path(base).expanduser() / name)

    wanted = {"transformer": [join(text, "transformer")], "connectors": [join(text, "connectors")]}
    if text_encoder is not None:
        wanted["text_encoder"] = [str(text_encoder)]
    elif hub:
        wanted["text_encoder"] = [join(text, "text_encoder")]
    else:
        base = Path(text).expanduser()
        wanted["text_encoder"] = [str(base / "text_encoder"), str(base.parent / "gemma3_12b")]
    found: dict[str, Path] = {}
    missing: dict[str, list[MissingWeightsError]] = {}
    for name, refs in wanted.items():
        errors = []
        for ref in refs:
            try:
                found[name] = resolve_weights(ref, what=f"LTX-2 refiner {name}", allow_download=allow_download)
                break
            except MissingWeightsError as exc:
                errors.append(exc)
        else:
            missing[name] = errors
    if missing:
        first = next(iter(missing.values()))[0]
        folders = "; ".join(f"{name}: {' or '.join(e.where for e in errs)}" for name, errs in missing.items())
        raise MissingWeightsError("LTX-2 refiner (stage 2)", first.ref, first.where,
                                  f"missing folders: {folders}")
    return found
