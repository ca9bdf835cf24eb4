"""The `tensorrt` session backend: the exported chunk graphs run as engines inside the ordinary WorldSession.

`EngineChunkModel` stands in for `SanaWorldModel` where the session uses it: `denoise_chunk` calls it once per
denoising step and once for the cache pass, exactly as it calls the torch model. Each call picks the graph for
(mode, chunk length), builds the host inputs (RoPE tables of the chunk's positions, UCPE rays, stacked text K/V,
the K/V masks), binds every input, output and state tensor by address, and runs the engine. The carried state
lives in two buffer sets: every graph reads the current set, the cache graph writes the spare one, and the two
swap after it (no copies).

An engine is anything with `bind(name, tensor)` and `execute()`:
    TensorRTEngine       a TensorRT execution context (`import tensorrt` happens only here)
    OnnxRuntimeEngine    the same graph through onnxruntime on the CPU; writes each output into the tensor
                         bound to it, as TensorRT writes into bound device memory (tests, and checking an export)
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from torch import Tensor, nn

from runtime.cache import SoftmaxBlockCache
from runtime.camera_torch import camera_conditions_to_ray_matrices
from runtime.config import config_from_dict
from runtime.export_onnx import MANIFEST, KVLayout, TensorSpec, engine_name, import_tensorrt
from runtime.rope import rope_tables


class EngineError(RuntimeError):
    """An engine directory or engine cannot be used; the message says why."""


# ------------------------------------------------------------------------------------------------------------
# Engines
# ------------------------------------------------------------------------------------------------------------
def _span(t: Tensor) -> tuple[int, int]:
    start = t.data_ptr()
    return start, start + t.numel() * t.element_size()


class TensorRTEngine:
    """One deserialized engine and its execution context; tensors are bound by device address."""

    def __init__(self, plan: str | Path, device: torch.device):
        trt = import_tensorrt()
        plan = Path(plan)
        if not plan.is_file():
            raise EngineError(f"{plan}: no such engine; build it with build_engines.sh (trtexec) or "
                              "`sana-wm export-trt --build` on a machine with TensorRT")
        self.device = torch.device(device)
        if self.device.type != "cuda":
            raise EngineError("TensorRT engines run on a CUDA device (--device cuda)")
        self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self._runtime.deserialize_cuda_engine(plan.read_bytes())
        if self.engine is None:
            raise EngineError(f"{plan}: TensorRT could not deserialize it (built by another TensorRT version "
                              "or for another GPU?)")
        self.context = self.engine.create_execution_context()
        self.names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]

    def bind(self, name: str, tensor: Tensor) -> None:
        if not tensor.is_cuda or not tensor.is_contiguous():
            raise EngineError(f"{name}: TensorRT needs a contiguous CUDA tensor")
        if not self.context.set_tensor_address(name, tensor.data_ptr()):
            raise EngineError(f"{name}: TensorRT refused the binding")

    def execute(self) -> None:
        stream = torch.cuda.current_stream(self.device).cuda_stream
        if not self.context.execute_async_v3(stream):
            raise EngineError("TensorRT execute_async_v3 failed (see its log)")


class OnnxRuntimeEngine:
    """Runs an exported chunk graph with onnxruntime (CPU) behind the engine interface."""

    def __init__(self, onnx_path: str | Path, threads: int | None = None):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or torch.get_num_threads()
        opts.log_severity_level = 3
        # Extended fusions turn an FP8 DequantizeLinear -> MatMul into MatMulIntegerToFloat, which rejects float8.
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        self.session = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.names = self.inputs + self.outputs
        self._bound: dict[str, Tensor] = {}

    def bind(self, name: str, tensor: Tensor) -> None:
        if name not in self.names:
            raise EngineError(f"{name}: not an input or output of this graph")
        if not tensor.is_contiguous():
            raise EngineError(f"{name}: bound tensors must be contiguous (an engine reads raw memory)")
        self._bound[name] = tensor

    def execute(self) -> None:
        missing = [n for n in self.names if n not in self._bound]
        if missing:
            raise EngineError(f"unbound tensors: {', '.join(missing)}")
        # TensorRT forbids an output that overlaps an input; so does this stand-in.
        spans = {n: _span(self._bound[n]) for n in self.names}
        for o in self.outputs:
            for i in self.inputs:
                if spans[o][0] < spans[i][1] and spans[i][0] < spans[o][1]:
                    raise EngineError(f"output {o} is bound over input {i}")
        feeds = {n: self._bound[n].detach().cpu().numpy() for n in self.inputs}
        for name, value in zip(self.outputs, self.session.run(self.outputs, feeds)):
            dst = self._bound[name]
            src = torch.from_numpy(value)
            if tuple(dst.shape) != tuple(src.shape) or dst.dtype != src.dtype:
                raise EngineError(f"{name}: bound {dst.dtype} {tuple(dst.shape)} but the graph makes "
                                  f"{src.dtype} {tuple(src.shape)}")
            dst.copy_(src)


# ------------------------------------------------------------------------------------------------------------
# Carried state
# ------------------------------------------------------------------------------------------------------------
class EngineState:
    """Takes the place of a StreamCache: two buffer sets of the state tensors (`current`, `spare`), the softmax
    K/V bookkeeping (a `SoftmaxBlockCache` holding no tensors: its `claim` is the torch path's own rule) and the
    position of the walk."""

    steady = False   # WorldSession's CUDA-graph path never applies to engines

    def __init__(self, specs: list[TensorSpec], kv: KVLayout, tokens_per_frame: int, device):
        def alloc():
            return {s.name: torch.zeros(s.shape, dtype=s.torch_dtype(), device=device) for s in specs}

        self.current, self.spare = alloc(), alloc()
        self.kv = kv
        empty = torch.empty(0)
        self.book = SoftmaxBlockCache(empty if kv.sink_tokens else None, empty, empty, tokens_per_frame,
                                      ring_tokens=[0] * kv.slots, ring_age=[-1] * kv.slots)
        self.chunks_done = 0
        self.frames_done = 0

    def kv_valid(self, device) -> Tensor:
        """Which context tokens hold a written chunk: sink tokens first, then each ring slot's."""
        parts = []
        if self.kv.sink_tokens:
            parts.append(torch.arange(self.kv.sink_tokens) < self.book.sink_tokens)
        for n in self.book.ring_tokens:
            parts.append(torch.arange(self.kv.slot_tokens) < n)
        return torch.cat(parts).to(device)

    def claim(self, tokens: int, device) -> Tensor:
        """Advance the bookkeeping for a cache pass; the one-hot `kv_write` of where this chunk goes."""
        slot = self.book.claim(tokens)
        onehot = torch.zeros(self.kv.targets, dtype=torch.bool)
        if slot is not None:
            onehot[slot + 1 if self.kv.sink_tokens else slot] = True
        return onehot.to(device)

    def swap(self) -> None:
        self.current, self.spare = self.spare, self.current

    def advance(self, frames: int) -> None:
        self.chunks_done += 1
        self.frames_done += frames

    def nbytes(self) -> int:
        """Both buffer sets (what the state occupies on the device)."""
        return 2 * sum(t.numel() * t.element_size() for t in self.current.values())

    def snapshot(self) -> dict:
        return {"tensors": {k: v.clone() for k, v in self.current.items()}, "book": copy.deepcopy(self.book),
                "chunks_done": self.chunks_done, "frames_done": self.frames_done}

    def restore(self, snap: dict) -> None:
        for k, t in self.current.items():
            t.copy_(snap["tensors"][k])
        self.book = copy.deepcopy(snap["book"])
        self.chunks_done = snap["chunks_done"]
        self.frames_done = snap["frames_done"]


# ------------------------------------------------------------------------------------------------------------
# The model stand-in
# ------------------------------------------------------------------------------------------------------------
class EngineChunkModel(nn.Module):
    """What WorldSession and `denoise_chunk` need of a model, with the chunk passes on engines.

    Args:
        manifest: the export's manifest.json (dict).
        engines: graph name -> engine (`bind` / `execute`).
        prepare_text: the torch model's `prepare_text` (text K/V once per prompt stays in torch).
        device: where the inputs, outputs and state live.
    """

    def __init__(self, manifest: dict, engines: dict, prepare_text, device):
        super().__init__()
        self.manifest = manifest
        self.cfg = config_from_dict(manifest["config_dict"], source=MANIFEST)
        self.dtype = getattr(torch, manifest["dtype"])
        self.device = torch.device(device)
        # WorldSession reads the device and dtype from the model's first parameter.
        self._anchor = nn.Parameter(torch.empty(0, dtype=self.dtype, device=self.device), requires_grad=False)
        self._prepare_text = prepare_text
        self.engines = engines
        self.graphs = {(g["mode"], g["frames"]): g for g in manifest["graphs"]}
        self.state_specs = [TensorSpec(s["name"], tuple(s["shape"]), s["dtype"]) for s in manifest["state"]]
        self.kv = KVLayout(manifest["kv"]["sink_tokens"], manifest["kv"]["slots"], manifest["kv"]["slot_tokens"])
        self.batch = manifest["batch"]
        self._outputs = {g["name"]: torch.empty(g["outputs"][0]["shape"], dtype=self.dtype, device=self.device)
                         for g in manifest["graphs"]}
        self._text = None       # (TextContext, stacked K, stacked V, bias) of the last prompt seen
        self._chunk = None      # (camera, positions key, host inputs) of the chunk being denoised

    def prepare_text(self, emb: Tensor, mask: Tensor):
        return self._prepare_text(emb, mask)

    def new_cache(self, batch: int = 1) -> EngineState:
        if batch != self.batch:
            raise EngineError(f"the engines were exported for batch {self.batch}, not {batch}")
        return EngineState(self.state_specs, self.kv, self.cfg.tokens_per_frame, self.device)

    # --------------------------------------------------------------------------------------------------------
    def _text_inputs(self, text) -> dict[str, Tensor]:
        if self._text is None or self._text[0] is not text:
            k = torch.stack([kv[0] for kv in text.kv]).to(self.device, self.dtype).contiguous()
            v = torch.stack([kv[1] for kv in text.kv]).to(self.device, self.dtype).contiguous()
            self._text = (text, k, v, text.bias.to(self.device, torch.float32).contiguous())
        return dict(zip(("text_k", "text_v", "text_bias"), self._text[1:]))

    def _chunk_inputs(self, camera: Tensor, frames: Tensor, key) -> dict[str, Tensor]:
        """RoPE tables and UCPE rays: the same for every pass of a chunk, so built once per chunk (`key`: the
        first position and length, None to rebuild)."""
        if key is None or self._chunk is None or self._chunk[0] is not camera or self._chunk[1] != key:
            cfg, (h, w) = self.cfg, (self.cfg.latent_height, self.cfg.latent_width)
            cos, sin = rope_tables(cfg.rope_split, frames, h, w, cfg.rope_theta)
            ccos, csin = rope_tables(cfg.rope_split, frames, h, w, cfg.rope_theta, camera=True)
            rays = camera_conditions_to_ray_matrices(camera.float(), (h, w))
            host = {"rays": rays, "rope_cos": cos, "rope_sin": sin, "cam_rope_cos": ccos, "cam_rope_sin": csin}
            host = {k: t.to(self.device, torch.float32).contiguous() for k, t in host.items()}
            self._chunk = (camera, key, host)
        return self._chunk[2]

    def plucker_terms(self, plucker: Tensor) -> None:
        """The engine embeds the ray maps itself (SanaWorldModel's per-chunk terms have no use here)."""

    def frame_tables(self, camera: Tensor, T: int, **_) -> None:
        """The engine path builds its RoPE / ray tables on the host once per chunk itself (`_chunk_inputs`)."""

    @torch.no_grad()
    def forward(self, x: Tensor, timestep: Tensor, text, camera: Tensor, plucker: Tensor, *, chunks=None,
                frame_offset: int | None = None, cache: EngineState | None = None, write_cache: bool = False,
                positions: Tensor | None = None, plucker_terms: None = None, frame_tables: None = None) -> Tensor:
        """Same arguments as SanaWorldModel.forward in streaming use (one chunk, with a cache). Returns the
        velocity in a buffer that the next call of the same graph overwrites."""
        if cache is None or (chunks is not None and len(chunks) != 1):
            raise EngineError("engines run the streaming step: one chunk with an EngineState cache")
        T = x.shape[2]
        mode = "cache" if write_cache else "denoise"
        graph = self.graphs.get((mode, T))
        if graph is None:
            raise EngineError(f"no {mode} graph for chunks of {T} latent frames in this export "
                              f"(have {sorted(self.graphs)})")
        if positions is not None:
            frames, key = positions.to(self.device), None      # a device tensor: no host read to key on
        else:
            start = cache.frames_done if frame_offset is None else frame_offset
            frames, key = torch.arange(start, start + T, device=self.device), (start, T)
        feeds = {"x": x, "timestep": timestep.float(), "plucker": plucker,
                 **self._text_inputs(text), **self._chunk_inputs(camera, frames, key)}
        names = {i["name"] for i in graph["inputs"]}
        if "kv_valid" in names:
            feeds["kv_valid"] = cache.kv_valid(self.device)
        before = copy.deepcopy(cache.book)
        if "kv_write" in names:
            feeds["kv_write"] = cache.claim(T * self.cfg.tokens_per_frame, self.device)
        elif write_cache:
            cache.book.claim(T * self.cfg.tokens_per_frame)
        try:
            engine = self.engines[graph["name"]]
            for spec in graph["inputs"]:
                name = spec["name"]
                if name.startswith("state."):
                    engine.bind(name, cache.current[name[len("state."):]])
                else:
                    t = feeds[name].to(self.device, getattr(torch, spec["dtype"])).contiguous()
                    feeds[name] = t     # keeps the staged tensor alive until the engine has run
                    engine.bind(name, t)
            out = self._outputs[graph["name"]]
            engine.bind("velocity", out)
            if write_cache:
                for spec in graph["outputs"][1:]:
                    engine.bind(spec["name"], cache.spare[spec["name"][len("new_state."):]])
            engine.execute()
        except BaseException:
            cache.book = before          # a failed pass leaves the walk where it was
            raise
        if write_cache:
            cache.swap()                 # this chunk's new state is the next chunk's input
            cache.advance(T)
        return out


# ------------------------------------------------------------------------------------------------------------
# Loading
# ------------------------------------------------------------------------------------------------------------
def read_manifest(engine_dir: str | Path) -> dict:
    path = Path(engine_dir, MANIFEST)
    if not path.is_file():
        raise EngineError(f"{engine_dir}: no {MANIFEST}; export the graphs with `sana-wm export-trt --out DIR`")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != "sana-wm-chunk-graphs":
        raise EngineError(f"{path}: not a sana-wm chunk-graph manifest")
    return manifest


def load_engine_model(engine_dir: str | Path, torch_model, *, backend: str = "tensorrt",
                      device=None) -> EngineChunkModel:
    """An EngineChunkModel over the export in `engine_dir`.

    backend: "tensorrt" (the .plan engines; needs tensorrt and CUDA) or "onnxruntime" (the .onnx graphs on the
    CPU). `torch_model` provides prepare_text and must have the export's config.
    """
    engine_dir = Path(engine_dir)
    manifest = read_manifest(engine_dir)
    if manifest["config_dict"] != torch_model.cfg.to_dict():
        raise EngineError(f"{engine_dir}: exported for config {manifest['config']!r}, but the model is "
                          f"{torch_model.cfg.name!r} (or differs from it)")
    quantization = manifest.get("quantization")
    if quantization and isinstance(torch_model, nn.Module):
        _quantize_text_side(torch_model, quantization)
    if backend == "tensorrt":
        import_tensorrt()               # the clear error first, before any other check
        device = torch.device(device or "cuda")
        engines = {g["name"]: TensorRTEngine(engine_dir / engine_name(g["name"]), device)
                   for g in manifest["graphs"]}
    elif backend == "onnxruntime":
        device = torch.device("cpu")
        engines = {g["name"]: OnnxRuntimeEngine(engine_dir / g["file"]) for g in manifest["graphs"]}
    else:
        raise EngineError(f"backend must be tensorrt or onnxruntime, got {backend!r}")
    return EngineChunkModel(manifest, engines, torch_model.prepare_text, device)


def _quantize_text_side(model: nn.Module, quantization: dict) -> None:
    """The text K/V stay on the host (prepare_text) but went through the quantized layers at export: quantize
    the torch model the same way (FP8: with the calibrated static scales), unless it already is."""
    from quant import QuantPolicy, quantize
    from quant.calibrate import set_fp8_input_scales
    from quant.linear import QuantLinear

    if any(isinstance(m, QuantLinear) for m in model.modules()):
        return
    quantize(model, QuantPolicy.from_dict(quantization["policy"]))
    set_fp8_input_scales(model, (quantization.get("activation_scales") or {}).get("scales", {}))


def engine_generator(gen, engine_dir: str | Path, backend: str = "tensorrt", device=None):
    """The generator `gen` with its model replaced by the engines (autoencoder and text encoder unchanged), for
    `render_walk` / `open_session`."""
    from runtime.pipeline import Generator

    model = load_engine_model(engine_dir, gen.model, backend=backend, device=device)
    return Generator(model, gen.autoencoder, gen.text_encoder, f"{gen.source} via {backend} engines in {engine_dir}")
