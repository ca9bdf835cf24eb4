"""ONNX export of the streaming chunk step for TensorRT: every piece of carried state is an explicit tensor.

Two graphs per chunk length T (the first chunk and the later ones differ: 4 and 3 latent frames):

    denoise_t{T}   one denoising pass:   inputs + state          -> velocity
    cache_t{T}     the clean cache pass: inputs + state + kv_write -> velocity + new_state (the next chunk's state)

State layout (`state_specs`), per block i:
    GDN block      b{i}.state [B,H,D,D] f32, b{i}.z [B,H,D] f32, b{i}.cam_state [B,H,D,D] f32,
                   b{i}.conv_k [B,K-1,S,C], b{i}.tconv [B,S,C]
    softmax block  b{i}.kv_sink [4,B,H,first*S,D] (with the sink), b{i}.kv_ring [slots,4,B,H,slot*S,D],
                   b{i}.tconv [B,S,C]; the 4 K/V streams in runtime.cache.KV_STREAMS order (main K, camera K,
                   main V, camera V), as the torch cache holds them
Graph input `state.<name>` is read; cache-graph output `new_state.<name>` is written and becomes the next chunk's
`state.<name>` (a runner swaps two buffer sets: no copies). The softmax K/V context always has its full shape
(sink + every ring slot); `kv_valid` [sink*S + slots*slot*S] masks the tokens not written yet and `kv_write`
(one-hot over [sink, slots...]) says where the cache pass puts this chunk's K/V. Both come from the same
bookkeeping as `runtime.cache.SoftmaxBlockCache.claim`, kept on the host. The frame position enters as the RoPE
tables of the chunk's absolute latent frames (float64 math that TensorRT lacks, so built on the host with
`runtime.rope.rope_tables`), and the camera as the UCPE ray matrices (`camera_conditions_to_ray_matrices`).

The graphs wrap the model's own modules: a GDN block writes its new state with the same `copy_` calls as in
streaming (into clones of the inputs), and a softmax block sees a functional stand-in of its K/V cache. The GDN
scans run through the PyTorch reference (`SANA_WM_KERNELS=reference`), whose frame loops unroll into plain ops.

Quantized layers (quant/policy.py scope) become modelopt-style Q/DQ subgraphs (the form modelopt 0.47's ONNX
exporters leave after their post-processing):
    nvfp4  W4A16: FLOAT4E2M1 weight -> DequantizeLinear(block_size 16, scale = DequantizeLinear(E4M3 block scales,
           fp32 tensor scale)) -> Transpose -> MatMul
    fp8    W8A8: activation QuantizeLinear/DequantizeLinear (static calibrated scale) and an E4M3 weight
           (stored pre-transposed) -> DequantizeLinear -> MatMul
Every node of a layer's subgraph is named `<layer>/...` (e.g. `blocks.0.attn.qkv/weight_dq`).

Graphs are in the model's dtype: bf16 for TensorRT (--stronglyTyped: the GDN states and scans stay fp32 as in
torch), fp32 for checking with onnxruntime on a CPU.
"""
from __future__ import annotations

import contextlib
import json
import tempfile
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from kernels.dispatch import reference_kernels
from quant.calibrate import calibrate_fp8_inputs
from runtime.attention import FrameContext
from runtime.cache import GDNBlockCache
from runtime.config import ModelConfig

MANIFEST = "manifest.json"
BUILD_SCRIPT = "build_engines.sh"
EXPORT_OPSET = 20   # the highest the TorchScript exporter supports
OPSET = 23          # declared after export, as modelopt does for FP4: 22 adds bf16 Conv / Sin / Cos / Softplus and
                    # 23 FLOAT4E2M1; the ops emitted at 20 mean the same at 23 (only types were added)
QDOMAIN = "sana_wm"   # placeholder ops of quantized layers, replaced after export
PRECISIONS = ("bf16", "fp8", "nvfp4")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


class ExportError(RuntimeError):
    """The export cannot be done as asked; the message says why."""


class TensorRTUnavailable(RuntimeError):
    """`import tensorrt` failed: engines can be neither built nor run here."""


def import_tensorrt():
    """The tensorrt module, imported only when engines are built or run."""
    try:
        import tensorrt
    except ImportError as exc:
        raise TensorRTUnavailable(
            f"TensorRT is not installed in this Python environment ({exc}); it is needed to build engines "
            "and to run --backend tensorrt. The ONNX graphs, manifest.json and build_engines.sh of "
            "`sana-wm export-trt` do not need it: build the engines on a machine with TensorRT") from None
    return tensorrt


# ------------------------------------------------------------------------------------------------------------
# Tensor layout
# ------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: str    # torch dtype name: "float32", "bfloat16", "bool"

    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)

    def to_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


def _dname(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


@dataclass(frozen=True)
class KVLayout:
    """Shape of the softmax K/V context of every softmax block (same for all of them)."""

    sink_tokens: int     # 0 without the sink
    slots: int
    slot_tokens: int

    @classmethod
    def of(cls, cfg: ModelConfig) -> KVLayout:
        S = cfg.tokens_per_frame
        slots = cfg.kv_cache_chunks - 1 if cfg.sink else cfg.kv_cache_chunks
        slot_frames = cfg.chunk_size if cfg.sink else max(cfg.chunk_size, cfg.first_chunk_size)
        return cls(cfg.first_chunk_size * S if cfg.sink else 0, slots, slot_frames * S)

    @property
    def context_tokens(self) -> int:
        return self.sink_tokens + self.slots * self.slot_tokens

    @property
    def targets(self) -> int:
        """Entries of kv_write: the sink (when on) then each ring slot."""
        return (1 if self.sink_tokens else 0) + self.slots


def state_specs(cfg: ModelConfig, dtype: torch.dtype, batch: int = 1) -> list[TensorSpec]:
    """Every carried tensor, in graph order (same shapes and dtypes as `runtime.cache.StreamCache`)."""
    S, C, H, D = cfg.tokens_per_frame, cfg.hidden_size, cfg.num_heads, cfg.head_dim
    kv = KVLayout.of(cfg)
    f32, act = "float32", _dname(dtype)
    specs = []
    for i in range(cfg.depth):
        if i in cfg.softmax_blocks:
            if kv.sink_tokens:
                specs.append(TensorSpec(f"b{i}.kv_sink", (4, batch, H, kv.sink_tokens, D), act))
            if kv.slots:
                specs.append(TensorSpec(f"b{i}.kv_ring", (kv.slots, 4, batch, H, kv.slot_tokens, D), act))
        else:
            specs += [TensorSpec(f"b{i}.state", (batch, H, D, D), f32), TensorSpec(f"b{i}.z", (batch, H, D), f32),
                      TensorSpec(f"b{i}.cam_state", (batch, H, D, D), f32),
                      TensorSpec(f"b{i}.conv_k", (batch, cfg.conv_kernel_size - 1, S, C), act)]
        specs.append(TensorSpec(f"b{i}.tconv", (batch, S, C), act))
    return specs


def chunk_input_specs(cfg: ModelConfig, frames: int, dtype: torch.dtype, batch: int = 1,
                      write_cache: bool = False) -> list[TensorSpec]:
    """The non-state inputs of a chunk graph of `frames` latent frames."""
    T, S, h, w = frames, cfg.tokens_per_frame, cfg.latent_height, cfg.latent_width
    H, D, L, act = cfg.num_heads, cfg.head_dim, cfg.text_max_length, _dname(dtype)
    specs = [TensorSpec("x", (batch, cfg.in_channels, T, h, w), act),
             TensorSpec("timestep", (batch, T), "float32"),
             TensorSpec("plucker", (batch, cfg.plucker_channels, T, h, w), act),
             TensorSpec("rays", (batch, T, S, 4, 4), "float32"),
             TensorSpec("rope_cos", (T, S, D // 2), "float32"), TensorSpec("rope_sin", (T, S, D // 2), "float32"),
             TensorSpec("cam_rope_cos", (T, S, D // 4), "float32"),
             TensorSpec("cam_rope_sin", (T, S, D // 4), "float32"),
             TensorSpec("text_k", (cfg.depth, batch, H, L, D), act),
             TensorSpec("text_v", (cfg.depth, batch, H, L, D), act),
             TensorSpec("text_bias", (batch, 1, 1, L), "float32")]
    kv = KVLayout.of(cfg)
    if cfg.softmax_blocks and kv.context_tokens:
        specs.append(TensorSpec("kv_valid", (kv.context_tokens,), "bool"))
        if write_cache:
            specs.append(TensorSpec("kv_write", (kv.targets,), "bool"))
    return specs


# ------------------------------------------------------------------------------------------------------------
# The functional chunk step
# ------------------------------------------------------------------------------------------------------------
def _put(buf: Tensor, current: Tensor, selected: Tensor) -> Tensor:
    """buf [4, B, H, N, D] with this chunk's K/V written over its first tokens where `selected` (0-d bool)."""
    n, cap = current.shape[3], buf.shape[3]
    if n > cap:
        return buf                  # a chunk this long never goes there (the runner never selects it)
    new = current if n == cap else torch.cat([current, buf[:, :, :, n:]], dim=3)
    return torch.where(selected, new, buf)


class _KVState:
    """Stands in for `SoftmaxBlockCache` inside `SoftmaxAttention.forward`: a fixed-shape context (sink, every
    ring slot, then the current chunk; unwritten tokens are masked through ctx.softmax_mask) and a functional
    write that leaves the new buffers in `sink` / `ring`."""

    def __init__(self, sink: Tensor | None, ring: Tensor | None, tconv: Tensor, write: Tensor | None):
        self.sink, self.ring, self.tconv, self._write = sink, ring, tconv, write

    def context(self, km: Tensor, vm: Tensor, kc: Tensor, vc: Tensor) -> tuple[Tensor, ...]:
        current = torch.stack([km, kc, vm, vc])          # runtime.cache.KV_STREAMS order, as the torch cache
        parts = [] if self.sink is None else [self.sink]
        parts += [] if self.ring is None else list(self.ring.unbind(0))
        main_k, cam_k, main_v, cam_v = torch.cat(parts + [current], dim=3).unbind(0)
        return main_k, main_v, cam_k, cam_v

    def write(self, km: Tensor, vm: Tensor, kc: Tensor, vc: Tensor) -> None:
        current = torch.stack([km, kc, vm, vc])
        selected = list(self._write.unbind(0))
        if self.sink is not None:
            self.sink = _put(self.sink, current, selected.pop(0))
        if self.ring is not None:
            self.ring = torch.stack([_put(slot, current, sel) for slot, sel in zip(self.ring.unbind(0), selected)])


class ChunkStep(nn.Module):
    """One model pass over one chunk as a pure function: named inputs and state in, velocity (and, for the cache
    pass, the new state) out, through `SanaWorldModel.forward_in_context`; tested against the streaming forward."""

    def __init__(self, model: nn.Module, frames: int, write_cache: bool, batch: int = 1):
        super().__init__()
        self.model = model
        self.frames = frames
        self.write_cache = write_cache
        cfg = model.cfg
        dtype = model.x_embedder.proj.weight.dtype
        self.states = state_specs(cfg, dtype, batch)
        self.chunk_inputs = chunk_input_specs(cfg, frames, dtype, batch, write_cache)
        self.input_specs = self.chunk_inputs + [TensorSpec(f"state.{s.name}", s.shape, s.dtype) for s in self.states]
        self.output_specs = [TensorSpec("velocity", (batch, cfg.in_channels, frames, cfg.latent_height,
                                                     cfg.latent_width), _dname(dtype))]
        if write_cache:
            self.output_specs += [TensorSpec(f"new_state.{s.name}", s.shape, s.dtype) for s in self.states]

    @property
    def input_names(self) -> list[str]:
        return [s.name for s in self.input_specs]

    @property
    def output_names(self) -> list[str]:
        return [s.name for s in self.output_specs]

    def example_inputs(self, seed: int = 0) -> tuple[Tensor, ...]:
        """Inputs of the right shapes and dtypes for tracing (random; kv masks all valid / one-hot)."""
        gen = torch.Generator().manual_seed(seed)
        device = next(self.model.parameters()).device
        out = []
        for s in self.input_specs:
            if s.dtype == "bool":
                t = torch.zeros(s.shape, dtype=torch.bool)
                t[..., 0] = True
                if s.name == "kv_valid":
                    t[:] = True
            else:
                t = torch.randn(s.shape, generator=gen).to(s.torch_dtype())
            out.append(t.to(device))
        return tuple(out)

    def forward(self, *inputs: Tensor) -> tuple[Tensor, ...]:
        m = self.model
        named = dict(zip(self.input_names, inputs))
        x = named["x"]
        _, _, T, h, w = x.shape
        mask = None
        if "kv_valid" in named:
            # Unwritten cache tokens are masked out; the current chunk always sees itself.
            mask = torch.cat([named["kv_valid"], torch.ones(T * h * w, dtype=torch.bool, device=x.device)])[None]
        ctx = FrameContext(((0, T),), (h, w), (named["rope_cos"], named["rope_sin"]),
                           (named["cam_rope_cos"], named["cam_rope_sin"]), named["rays"], mask, self.write_cache)
        caches = []
        for i, blk in enumerate(m.blocks):
            def st(key, i=i):
                return named.get(f"state.b{i}.{key}")
            if blk.is_softmax:
                caches.append(_KVState(st("kv_sink"), st("kv_ring"), st("tconv").clone(), named.get("kv_write")))
            else:
                # Clones: the block writes its new state in place, exactly as it does into a StreamCache.
                caches.append(GDNBlockCache(*(st(k).clone() for k in ("state", "z", "cam_state", "conv_k", "tconv"))))
        text_kv = [(named["text_k"][i], named["text_v"][i]) for i in range(len(m.blocks))]
        v = m.forward_in_context(x, named["timestep"], named["plucker"], text_kv, named["text_bias"], ctx, caches)
        if not self.write_cache:
            return (v,)
        new_state = []
        for s in self.states:
            block, key = s.name.split(".", 1)               # "b3.kv_sink": block 3's cache attribute "sink"
            new_state.append(getattr(caches[int(block[1:])], key.removeprefix("kv_")))
        return (v, *new_state)


# ------------------------------------------------------------------------------------------------------------
# Quantized layers: placeholders while tracing, Q/DQ subgraphs after
# ------------------------------------------------------------------------------------------------------------
_TRACED: dict[str, nn.Module] = {}   # layer name -> quantized module, while an export runs


class _QuantLinearOp(torch.autograd.Function):
    """x [..., K] -> [..., N] through a quantized layer; in the ONNX graph one `sana_wm::QuantLinear` node."""

    @staticmethod
    def forward(ctx, x: Tensor, layer: str) -> Tensor:
        # Run untraced: the graph gets `symbolic`'s node, and the tracer has no type for the fp8 / fp4 tensors.
        state = torch._C._get_tracing_state()
        torch._C._set_tracing_state(None)
        try:
            return _TRACED[layer].linear(x)
        finally:
            torch._C._set_tracing_state(state)

    @staticmethod
    def symbolic(g, x, layer: str):
        out = g.op(f"{QDOMAIN}::QuantLinear", x, layer_s=layer)
        sizes = x.type().varyingSizes()
        out.setType(x.type().with_sizes(sizes[:-1] + [_TRACED[layer].out_features]))
        return out


class _ExportQuantLinear(nn.Module):
    def __init__(self, name: str, module: nn.Module, conv: bool):
        super().__init__()
        self.name, self.conv, self.used = name, conv, False
        # Not a submodule: the tracer must not see the packed fp8 / fp4 buffers (it has no type for them).
        object.__setattr__(self, "q", module)

    def forward(self, x: Tensor) -> Tensor:
        self.used = True
        if self.conv and x.ndim == 4:   # 1x1 conv on NCHW: the same per-pixel linear map, channels last
            return _QuantLinearOp.apply(x.permute(0, 2, 3, 1), self.name).permute(0, 3, 1, 2)
        return _QuantLinearOp.apply(x, self.name)   # a linear, or a 1x1 conv on token-major [N, in]


@contextlib.contextmanager
def _quant_placeholders(model: nn.Module):
    """Swap every quantized module for its placeholder; yields {name: placeholder}; restores the model."""
    from quant.linear import QuantLinear, _Conv1x1, _TemporalConv

    temporal = [name for name, module in model.named_modules() if isinstance(module, _TemporalConv)]
    if temporal:
        raise ValueError(f"{temporal[0]}: quantized temporal convs (the 'compact' quantization scope) have no ONNX "
                         "export; export with the official scope")
    swapped = {}
    for name, module in list(model.named_modules()):
        if isinstance(module, QuantLinear):
            parent, _, child = name.rpartition(".")
            holder = _ExportQuantLinear(name, module, isinstance(module, _Conv1x1))
            setattr(model.get_submodule(parent) if parent else model, child, holder)
            swapped[name] = holder
            _TRACED[name] = module
    try:
        yield swapped
    finally:
        for name, holder in swapped.items():
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, holder.q)
            _TRACED.pop(name, None)


def _torch_to_proto(name: str, t: Tensor, data_type: int | None = None, dims=None):
    """TensorProto from raw bytes (covers bf16 / fp8 / packed fp4, which numpy cannot hold)."""
    import onnx

    t = t.detach().contiguous().cpu()
    types = {torch.float32: onnx.TensorProto.FLOAT, torch.bfloat16: onnx.TensorProto.BFLOAT16,
             torch.float16: onnx.TensorProto.FLOAT16, torch.float8_e4m3fn: onnx.TensorProto.FLOAT8E4M3FN,
             torch.uint8: onnx.TensorProto.UINT8}
    raw = t.view(torch.uint8) if t.element_size() == 1 else t
    proto = onnx.TensorProto(name=name, data_type=data_type or types[t.dtype],
                             dims=list(t.shape) if dims is None else list(dims))
    proto.raw_data = raw.numpy().tobytes() if t.element_size() == 1 else _as_bytes(t)
    return proto


def _as_bytes(t: Tensor) -> bytes:
    ints = {2: torch.int16, 4: torch.int32, 8: torch.int64}
    return t.view(ints[t.element_size()]).numpy().tobytes()


def _lower_quant_nodes(proto, layers: dict[str, nn.Module], act_dtype: torch.dtype) -> list[str]:
    """Replace each `sana_wm::QuantLinear` node with its modelopt-style Q/DQ subgraph. Returns the layer names."""
    import onnx
    from onnx import helper

    from quant.linear import FP8Linear, NVFP4Linear

    graph = proto.graph
    act = _torch_to_proto("x", torch.zeros((), dtype=act_dtype)).data_type
    new_nodes, inits, lowered = [], [], []
    for node in graph.node:
        if node.domain != QDOMAIN:
            new_nodes.append(node)
            continue
        name = next(a.s.decode() for a in node.attribute if a.name == "layer")
        mod, x, y = layers[name], node.input[0], node.output[0]
        p = f"{name}/"                                # every new node and tensor is named after its layer
        mm_out = y if mod.bias is None else p + "matmul"
        if isinstance(mod, NVFP4Linear):
            n, k = mod.out_features, mod.in_features
            inits += [_torch_to_proto(p + "weight_f4", mod.weight, onnx.TensorProto.FLOAT4E2M1, (n, k)),
                      _torch_to_proto(p + "weight_scale", mod.weight_scale),
                      _torch_to_proto(p + "weight_scale_2", mod.weight_scale_2.float())]
            new_nodes += [
                helper.make_node("DequantizeLinear", [p + "weight_scale", p + "weight_scale_2"], [p + "block_scale"],
                                 name=p + "scale_dq"),
                helper.make_node("DequantizeLinear", [p + "weight_f4", p + "block_scale"], [p + "weight_dq"],
                                 name=p + "weight_dq", axis=-1, block_size=16)]
            w = p + "weight_dq"
            if act_dtype != torch.float32:
                new_nodes.append(helper.make_node("Cast", [w], [p + "weight_cast"], name=p + "weight_cast", to=act))
                w = p + "weight_cast"
            new_nodes += [helper.make_node("Transpose", [w], [p + "weight_t"], name=p + "weight_t", perm=[1, 0]),
                          helper.make_node("MatMul", [x, p + "weight_t"], [mm_out], name=p + "matmul")]
        elif isinstance(mod, FP8Linear) and mod.block_size is None:
            if mod.input_scale is None:
                raise ExportError(f"{name}: FP8 export needs a static activation scale (calibrate_fp8_inputs)")
            inits += [_torch_to_proto(p + "input_scale", mod.input_scale.to(act_dtype)),
                      _torch_to_proto(p + "zero_point", torch.zeros((), dtype=torch.float8_e4m3fn)),
                      _torch_to_proto(p + "weight_f8", mod.weight.t()),       # [K, N]: DQ feeds MatMul directly
                      _torch_to_proto(p + "weight_scale", mod.weight_scale.to(act_dtype))]
            new_nodes += [
                helper.make_node("QuantizeLinear", [x, p + "input_scale", p + "zero_point"], [p + "x_q"],
                                 name=p + "input_q"),
                helper.make_node("DequantizeLinear", [p + "x_q", p + "input_scale", p + "zero_point"],
                                 [p + "x_dq"], name=p + "input_dq"),
                helper.make_node("DequantizeLinear", [p + "weight_f8", p + "weight_scale"], [p + "weight_dq"],
                                 name=p + "weight_dq"),
                helper.make_node("MatMul", [p + "x_dq", p + "weight_dq"], [mm_out], name=p + "matmul")]
        else:
            raise ExportError(f"{name}: no ONNX form for {type(mod).__name__} (exportable: nvfp4, per-tensor fp8)")
        if mod.bias is not None:
            inits.append(_torch_to_proto(p + "bias", mod.bias.to(act_dtype)))
            new_nodes.append(helper.make_node("Add", [mm_out, p + "bias"], [y], name=p + "bias_add"))
        lowered.append(name)
    graph.ClearField("node")
    graph.node.extend(new_nodes)
    graph.initializer.extend(inits)
    keep = [o for o in proto.opset_import if o.domain != QDOMAIN]
    proto.ClearField("opset_import")
    proto.opset_import.extend(keep)
    return lowered


# ------------------------------------------------------------------------------------------------------------
# Export
# ------------------------------------------------------------------------------------------------------------
@dataclass
class GraphRecord:
    name: str
    file: str
    mode: str            # "denoise" or "cache"
    frames: int
    inputs: list[dict]
    outputs: list[dict]
    quantized_layers: list[str]

    def to_dict(self) -> dict:
        return asdict(self)


def _trace(model: nn.Module, frames: int, write_cache: bool, batch: int, workdir: Path):
    """The ONNX graph of one chunk pass, quantized layers lowered, at opset 23. Returns (proto, step)."""
    import onnx

    if frames < 2:
        # Its zero-length slice writes crash the TorchScript exporter (SIGFPE), taking the process with it.
        raise ExportError(f"chunks of {frames} latent frame cannot be exported; use chunks of 2 or more")
    step = ChunkStep(model, frames, write_cache, batch).eval()
    dtype = model.x_embedder.proj.weight.dtype
    with (reference_kernels(), _quant_placeholders(model) as holders, torch.no_grad(), warnings.catch_warnings(),
          tempfile.TemporaryDirectory(dir=workdir) as tmp):
        # The TorchScript exporter is deprecated upstream (see export_chunk_graph for why it is used here); the
        # tracer's warnings are about Python values frozen into this fixed-shape graph, which is intended.
        for category in (DeprecationWarning, FutureWarning, UserWarning, torch.jit.TracerWarning):
            warnings.filterwarnings("ignore", category=category)
        raw = Path(tmp, "chunk.onnx")    # a model over 2 GB comes out as one file per tensor: keep them apart
        torch.onnx.export(step, step.example_inputs(), str(raw), dynamo=False, opset_version=EXPORT_OPSET,
                          input_names=step.input_names, output_names=step.output_names,
                          # Folding a bf16 graph crashes the exporter (ComplexDouble constants); TensorRT folds.
                          do_constant_folding=dtype == torch.float32,
                          custom_opsets={QDOMAIN: 1} if holders else None)
        proto = onnx.load(str(raw))
        used = {n: h.q for n, h in holders.items() if h.used}
        if used:
            _lower_quant_nodes(proto, used, dtype)
    for o in proto.opset_import:
        if o.domain in ("", "ai.onnx"):
            o.version = OPSET
    proto.ir_version = max(proto.ir_version, onnx.helper.find_min_ir_version_for(list(proto.opset_import)))
    if dtype != torch.float32:
        _repair_complex_casts(proto, dtype)
        _legalize_low_precision(proto)
    return proto, step


def _finish(proto, step: ChunkStep, path: Path) -> GraphRecord:
    """Check the graph's I/O against the declared layout, save it, run onnx.checker."""
    import onnx

    got_in = [i.name for i in proto.graph.input]
    got_out = [o.name for o in proto.graph.output]
    if got_in != step.input_names or got_out != step.output_names:
        raise ExportError(f"{path.name}: graph I/O differs from the declared layout: inputs {got_in}, "
                          f"outputs {got_out}")
    _save(proto, path)
    onnx.checker.check_model(str(path), full_check=True)
    layers = sorted({n.name.split("/")[0] for n in proto.graph.node if n.op_type == "DequantizeLinear"})
    return GraphRecord(path.stem, path.name, "cache" if step.write_cache else "denoise", step.frames,
                       [s.to_dict() for s in step.input_specs], [s.to_dict() for s in step.output_specs], layers)


def export_chunk_graph(model: nn.Module, path: str | Path, frames: int, write_cache: bool,
                       batch: int = 1) -> GraphRecord:
    """Export one chunk graph of `model` (quantized modules included) to `path`; checked with onnx.checker.

    The legacy TorchScript exporter (dynamo=False) is used on purpose: modelopt's own Q/DQ export is built on
    its symbolic functions (our quantized layers enter the graph the same way, as custom-op placeholders), it
    traces the reference GDN scan's frame loops into plain ops and the state updates on cloned inputs into
    functional ones, and it needs no onnxscript.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    proto, step = _trace(model, frames, write_cache, batch, path.parent)
    return _finish(proto, step, path)


def _keep_only_velocity(proto) -> None:
    """Turn a cache graph into its denoise graph in place: the velocity does not depend on the cache writes
    (SanaWorldModel.forward computes the same velocity with write_cache False), so dropping the new-state
    outputs and every node only they need leaves exactly the denoising pass."""
    graph = proto.graph
    if any(a.type in (a.GRAPH, a.GRAPHS) for n in graph.node for a in n.attribute):
        raise ExportError("control-flow nodes in the chunk graph: cannot prune it to the denoising pass")
    producer = {o: n for n in graph.node for o in n.output}
    needed, todo = set(), ["velocity"]
    while todo:
        name = todo.pop()
        if name in needed:
            continue
        needed.add(name)
        if name in producer:
            todo.extend(i for i in producer[name].input if i)
    nodes = [n for n in graph.node if any(o in needed for o in n.output)]
    inits = [t for t in graph.initializer if t.name in needed]
    inputs = [i for i in graph.input if i.name in needed or i.name.startswith("state.")]
    outputs = [o for o in graph.output if o.name == "velocity"]
    for field, items in (("node", nodes), ("initializer", inits), ("input", inputs), ("output", outputs)):
        graph.ClearField(field)
        getattr(graph, field).extend(items)
    value_info = [v for v in graph.value_info if v.name in needed]
    graph.ClearField("value_info")
    graph.value_info.extend(value_info)


def _repair_complex_casts(proto, dtype: torch.dtype) -> int:
    """The exporter's scaled_dot_product_attention symbolic casts the softmax scale of a bf16 query to
    complex128 (a dtype-table slip); nothing in this model is complex, so those Casts get the activation dtype."""
    from onnx import TensorProto

    act = _torch_to_proto("x", torch.zeros((), dtype=dtype)).data_type
    count = 0
    for node in proto.graph.node:
        if node.op_type == "Cast":
            for a in node.attribute:
                if a.name == "to" and a.i in (TensorProto.COMPLEX64, TensorProto.COMPLEX128):
                    a.i = act
                    count += 1
    return count


def _legalize_low_precision(proto) -> int:
    """Run the ops that ONNX does not define for bf16 / fp16 (Einsum, of the patch embedders) in fp32 between
    Casts. Such ops take one type T for all inputs and outputs, so the outputs are cast back. Returns how many."""
    import onnx
    from onnx import TensorProto, helper

    low = (TensorProto.BFLOAT16, TensorProto.FLOAT16)
    opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    inferred = onnx.shape_inference.infer_shapes(proto, strict_mode=False)
    types = {v.name: v.type.tensor_type.elem_type
             for v in (*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output)}
    types.update({t.name: t.data_type for t in proto.graph.initializer})

    def defined(op: str, elem: int) -> bool:
        want = f"tensor({onnx.helper.tensor_dtype_to_string(elem).split('.')[-1].lower()})"
        schema = onnx.defs.get_schema(op, opset)
        return all(want in c.allowed_type_strs for c in schema.type_constraints if "tensor(float)" in c.allowed_type_strs)

    nodes, count = [], 0
    for node in proto.graph.node:
        elem = next((types.get(i) for i in node.input if types.get(i) in low), None)
        if node.domain not in ("", "ai.onnx") or elem is None or defined(node.op_type, elem):
            nodes.append(node)
            continue
        for k, name in enumerate(node.input):
            if types.get(name) in low:
                nodes.append(helper.make_node("Cast", [name], [f"{name}/fp32_{count}_{k}"], to=TensorProto.FLOAT))
                node.input[k] = f"{name}/fp32_{count}_{k}"
        outs = list(node.output)
        for k, name in enumerate(outs):
            node.output[k] = f"{name}/fp32"
        nodes.append(node)
        nodes += [helper.make_node("Cast", [f"{name}/fp32"], [name], to=elem) for name in outs]
        count += 1
    proto.graph.ClearField("node")
    proto.graph.node.extend(nodes)
    return count


def _save(proto, path: Path) -> None:
    import onnx

    size = sum(len(t.raw_data) for t in proto.graph.initializer)
    external = size > 1_500_000_000          # protobuf's 2 GB limit: large models keep weights beside the graph
    data = path.with_suffix(".onnx.data")
    if data.exists():
        data.unlink()
    onnx.save(proto, str(path), save_as_external_data=external, all_tensors_to_one_file=True,
              location=data.name)


def chunk_lengths(cfg: ModelConfig) -> list[int]:
    """Distinct chunk lengths of a streaming session: the first chunk, then the later ones."""
    return sorted({cfg.first_chunk_size, cfg.chunk_size}, reverse=True)


def export_graphs(model: nn.Module, out_dir: str | Path, batch: int = 1, log=None) -> list[GraphRecord]:
    """denoise_t{T}.onnx and cache_t{T}.onnx for every chunk length of the model's config. One trace per length:
    the denoise graph is the cache graph without the state writes (`_keep_only_velocity`)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    records = []
    for T in chunk_lengths(model.cfg):
        if log:
            log(f"exporting denoise_t{T}.onnx and cache_t{T}.onnx")
        proto, step = _trace(model, T, True, batch, out_dir)
        cache = _finish(proto, step, out_dir / f"cache_t{T}.onnx")
        _keep_only_velocity(proto)
        denoise = _finish(proto, ChunkStep(model, T, False, batch), out_dir / f"denoise_t{T}.onnx")
        records += [denoise, cache]
    return records


# ------------------------------------------------------------------------------------------------------------
# Manifest, build script, engine build
# ------------------------------------------------------------------------------------------------------------
def _versions() -> dict:
    import onnx

    import runtime

    out = {"sana_wm": runtime.__version__, "torch": torch.__version__, "onnx": onnx.__version__}
    for mod in ("modelopt", "onnxruntime", "tensorrt"):
        try:
            out[mod] = __import__(mod).__version__
        except ImportError:
            out[mod] = None
    return out


def write_manifest(out_dir: str | Path, model: nn.Module, records: list[GraphRecord], *, precision: str,
                   source: str = "", policy=None, calibration: dict | None = None) -> dict:
    cfg = model.cfg
    dtype = model.x_embedder.proj.weight.dtype
    kv = KVLayout.of(cfg)
    states = state_specs(cfg, dtype)
    in_graph = sorted({n for r in records for n in r.quantized_layers})
    manifest = {
        "format": "sana-wm-chunk-graphs", "version": 1,
        "config": cfg.name, "config_dict": cfg.to_dict(), "weights": source,
        "precision": precision, "dtype": _dname(dtype), "batch": records[0].inputs[0]["shape"][0],
        "versions": _versions(),
        "quantization": None if policy is None else {
            "policy": policy.to_dict(), "layers_in_graphs": in_graph,
            "activation_scales": None if not calibration else {
                "kind": "static per-tensor, max calibration", **calibration}},
        "graphs": [r.to_dict() for r in records],
        "state": [{**s.to_dict(), "input": f"state.{s.name}", "output": f"new_state.{s.name}"} for s in states],
        # Which output of the cache graph feeds which input of every graph of the next chunk.
        "state_feed": {f"new_state.{s.name}": f"state.{s.name}" for s in states},
        "kv": {"sink_tokens": kv.sink_tokens, "slots": kv.slots, "slot_tokens": kv.slot_tokens,
               "kv_valid": "bool [sink_tokens + slots * slot_tokens]: sink tokens then each slot's, true where "
                           "written (runtime.cache.SoftmaxBlockCache bookkeeping)",
               "kv_write": "bool one-hot [sink (when on), slot 0, ...]: where the cache pass writes this chunk"},
        "host_inputs": {
            "rope_cos/rope_sin": "runtime.rope.rope_tables(cfg.rope_split, positions, h, w, cfg.rope_theta)",
            "cam_rope_cos/cam_rope_sin": "the same with camera=True",
            "positions": "absolute latent frames of the chunk: frames_done + arange(T)",
            "rays": "runtime.camera_torch.camera_conditions_to_ray_matrices(camera, (h, w))",
            "text_k/text_v/text_bias": "SanaWorldModel.prepare_text, per-block K/V stacked on dim 0",
        },
        "sampler": {"timesteps": list(cfg.denoising_timesteps),
                    "loop": "per chunk: denoise graph at each timestep but the last (Euler step on the host), "
                            "then the cache graph at t = 0 on the clean latents"},
    }
    Path(out_dir, MANIFEST).write_text(json.dumps(manifest, indent=1))
    return manifest


def engine_name(graph: str) -> str:
    return f"{graph}.plan"


def write_build_script(out_dir: str | Path, records: list[GraphRecord]) -> Path:
    """trtexec command lines, one engine per graph. --stronglyTyped: the graph's dtypes (bf16, the fp32 GDN
    states, the Q/DQ formats) are the engine's, nothing is left for TensorRT to pick."""
    lines = ["#!/bin/sh",
             "# TensorRT engines of the exported chunk graphs (written by `sana-wm export-trt`).",
             "# Needs trtexec from TensorRT >= 10 (NVFP4 graphs: a TensorRT with FP4 support and opset 23).",
             "set -e", 'cd "$(dirname "$0")"']
    for r in records:
        lines.append(f"trtexec --onnx={r.file} --saveEngine={engine_name(r.name)} --stronglyTyped --skipInference")
    path = Path(out_dir, BUILD_SCRIPT)
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o755)
    return path


def build_engines(out_dir: str | Path, workspace_gb: float | None = None) -> list[Path]:
    """Build every graph of `out_dir`'s manifest into a TensorRT engine (the Python builder; same settings as
    build_engines.sh). Raises TensorRTUnavailable where tensorrt cannot be imported."""
    trt = import_tensorrt()
    out_dir = Path(out_dir)
    manifest = json.loads((out_dir / MANIFEST).read_text())
    logger = trt.Logger(trt.Logger.WARNING)
    built = []
    for g in manifest["graphs"]:
        builder = trt.Builder(logger)
        network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(out_dir / g["file"])):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise ExportError(f"{g['file']}: TensorRT could not parse it: {errors}")
        config = builder.create_builder_config()
        if workspace_gb:
            config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
        plan = builder.build_serialized_network(network, config)
        if plan is None:
            raise ExportError(f"{g['file']}: TensorRT failed to build an engine (see its log above)")
        path = out_dir / engine_name(g["name"])
        path.write_bytes(bytes(plan))
        built.append(path)
    return built


def export_generator(gen, out_dir: str | Path, precision: str, *, dtype: str = "bf16", calib_chunks: int = 2,
                     image=None, prompt: str = "", log=print) -> dict:
    """`sana-wm export-trt`: quantize per the policy (fp8: calibrate static activation scales on a short walk
    from the start image), export every chunk graph, write the manifest and build_engines.sh.

    The generator's model is changed in place (quantized, cast to `dtype`)."""
    if precision not in PRECISIONS:
        raise ExportError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if dtype not in DTYPES:
        raise ExportError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = gen.model.eval()
    policy, calibration = None, None
    if precision != "bf16":
        from quant import default_policy, quantize

        policy = default_policy(precision)
        quantize(model, policy)            # from the loaded (fp32) weights; the packed formats survive the cast
    model.to(DTYPES[dtype])
    if precision == "fp8":
        log(f"calibrating FP8 activation scales on {calib_chunks} chunks")
        scales = calibrate_fp8_inputs(model, lambda: _calibration_walk(gen, calib_chunks, image, prompt))
        calibration = {"chunks": calib_chunks, "walk": CALIBRATION_ACTIONS, "scales": scales}
    records = export_graphs(model, out_dir, log=log)
    manifest = write_manifest(out_dir, model, records, precision=precision, source=gen.source, policy=policy,
                              calibration=calibration)
    write_build_script(out_dir, records)
    return manifest


CALIBRATION_ACTIONS = "w-24,a-16,wd-24,none-200"


def _calibration_walk(gen, chunks: int, image, prompt: str) -> None:
    from runtime.camera import actions_to_c2w
    from runtime.pipeline import open_session

    if image is None:
        image = Path(__file__).resolve().parent / "assets" / "start.png"
    session = open_session(gen, image, prompt)
    poses = actions_to_c2w(CALIBRATION_ACTIONS)
    try:
        for _ in range(chunks):
            session.step(session.next_poses(poses))
    finally:
        session.close()

