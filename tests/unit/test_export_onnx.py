"""ONNX export of the streaming chunk step (issue 12).

The fp32 graphs run with onnxruntime for several chunks, carrying their own state from each cache pass to the
next chunk, and are compared pass by pass with the torch streaming forward. The quantized graphs carry Q/DQ
nodes on exactly the precision policy's layers and compute what the quantized torch model computes.

Small settings for a slow CPU: the tiny-world model cut to one GDN and one softmax block, chunks of 2 latent
frames, a 3x4 latent grid. The sink plus one ring slot (kv_cache_chunks 2) means that from the fourth chunk on
the ring holds a newer chunk than the one first written there.
"""
import collections
import copy

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx.reference import ReferenceEvaluator

from quant import quantize, select_modules
from quant.calibrate import calibrate_fp8_inputs
from runtime import export_onnx as ex
from runtime.cache import SoftmaxBlockCache
from runtime.camera_torch import camera_conditions_to_ray_matrices
from runtime.config import load_config
from runtime.model import build_model, chunk_ranges
from runtime.rope import rope_tables
from tests.model_inputs import random_inputs
from tests.tolerances import FP32_REL, rel_err

CFG = load_config("tiny-world").replace(name="tiny-export", depth=2, softmax_every_n=2, first_chunk_size=2,
                                        chunk_size=2, height=48, width=64)
CHUNKS = 5
T = CFG.chunk_size
FP8_REL = 1e-3   # an activation one fp32 ulp from an FP8 rounding boundary may round the other way


@pytest.fixture(scope="module")
def model():
    return build_model(CFG, init="random", seed=3)


@pytest.fixture(scope="module")
def walk(model):
    """Inputs of CHUNKS chunks: noisy latents, timesteps, text, camera, Plucker."""
    return random_inputs(model, CHUNKS * T, seed=7)


@pytest.fixture(scope="module")
def fp32_graphs(model, tmp_path_factory):
    out = tmp_path_factory.mktemp("fp32")
    records = ex.export_graphs(model, out)
    return {r.mode: (out / r.file, r) for r in records}


# ------------------------------------------------------------------------------------------------------------
# Helpers: graph inputs built independently of runtime.trt_backend
# ------------------------------------------------------------------------------------------------------------
def session(path):
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def run(sess, feeds: dict) -> dict:
    names = [o.name for o in sess.get_outputs()]
    outs = sess.run(names, {i.name: feeds[i.name].detach().numpy() for i in sess.get_inputs()})
    return {n: torch.from_numpy(np.asarray(o)) for n, o in zip(names, outs)}


def chunk_feeds(model, walk, span, timestep, state: dict, kv: SoftmaxBlockCache, write=None) -> dict:
    """Named inputs of the graph for the frames `span` = (start, end): the walk's slice, host tables, state and
    the K/V masks from the torch cache's own bookkeeping (`kv`)."""
    x, _, text, cam, plk = walk
    cfg, (h, w) = model.cfg, (model.cfg.latent_height, model.cfg.latent_width)
    s, e = span
    frames = torch.arange(s, e)
    cos, sin = rope_tables(cfg.rope_split, frames, h, w, cfg.rope_theta)
    ccos, csin = rope_tables(cfg.rope_split, frames, h, w, cfg.rope_theta, camera=True)
    feeds = {"x": x[:, :, s:e], "timestep": timestep, "plucker": plk[:, :, s:e],
             "rays": camera_conditions_to_ray_matrices(cam[:, s:e].float(), (h, w)),
             "rope_cos": cos, "rope_sin": sin, "cam_rope_cos": ccos, "cam_rope_sin": csin,
             "text_k": torch.stack([k for k, _ in text.kv]), "text_v": torch.stack([v for _, v in text.kv]),
             "text_bias": text.bias}
    valid = [] if kv.sink is None else [torch.arange(kv.sink.shape[3]) < kv.sink_tokens]
    feeds["kv_valid"] = torch.cat(valid + [torch.arange(kv.ring.shape[4]) < n for n in kv.ring_tokens])
    if write is not None:
        feeds["kv_write"] = write
    feeds.update({f"state.{k}": v for k, v in state.items()})
    return {k: v.contiguous() for k, v in feeds.items()}


def torch_state(cache) -> dict:
    """A StreamCache's tensors under the graphs' state names."""
    out = {}
    for i, b in enumerate(cache.blocks):
        if isinstance(b, SoftmaxBlockCache):
            if b.sink is not None:
                out[f"b{i}.kv_sink"] = b.sink
            out[f"b{i}.kv_ring"] = b.ring
        else:
            out.update({f"b{i}.{k}": v for k, v in b.tensors().items()})
        out[f"b{i}.tconv"] = b.tconv
    return out


def kv_cache(cache) -> SoftmaxBlockCache:
    return next(b for b in cache.blocks if isinstance(b, SoftmaxBlockCache))


def written_target(kv: SoftmaxBlockCache, chunks_before: int) -> torch.Tensor:
    """One-hot [sink (when on), slots...] of where the torch cache pass just wrote."""
    sink = kv.sink is not None
    onehot = torch.zeros(sink + len(kv.ring_tokens), dtype=torch.bool)
    onehot[0 if sink and chunks_before == 0 else sink + kv.ring_age.index(chunks_before)] = True
    return onehot


def span(c: int) -> tuple[int, int]:
    return c * T, (c + 1) * T


def torch_pass(model, walk, span, timestep, cache, write=False):
    x, _, text, cam, plk = walk
    s, e = span
    with torch.no_grad():
        return model(x[:, :, s:e], timestep, text, cam[:, s:e], plk[:, :, s:e], cache=cache, write_cache=write)


# ------------------------------------------------------------------------------------------------------------
def test_graphs_pass_the_checker_with_every_state_as_input_and_output(fp32_graphs, model):
    specs = ex.state_specs(model.cfg, torch.float32)
    assert {s.name for s in specs} == set(torch_state(model.new_cache()))
    for mode, (path, record) in fp32_graphs.items():
        onnx.checker.check_model(str(path), full_check=True)
        graph = onnx.load(str(path)).graph
        inputs = {i.name: i for i in graph.input}
        outputs = [o.name for o in graph.output]
        for s in specs:
            dims = [d.dim_value for d in inputs[f"state.{s.name}"].type.tensor_type.shape.dim]
            assert tuple(dims) == s.shape, s.name
        if mode == "cache":
            assert outputs == ["velocity"] + [f"new_state.{s.name}" for s in specs]
            assert "kv_write" in inputs
        else:
            assert outputs == ["velocity"] and "kv_write" not in inputs
        assert record.quantized_layers == []


def test_graphs_carry_the_stream_like_the_torch_cache(fp32_graphs, model, walk):
    """Five chunks: each denoising pass and cache pass of the graphs, fed the state the graphs themselves
    produced, against the torch streaming forward; the sink and the ring (overwritten from chunk 3) included."""
    denoise, cache_pass = session(fp32_graphs["denoise"][0]), session(fp32_graphs["cache"][0])
    ts = walk[1]
    cache = model.new_cache()
    state = {k: v.clone() for k, v in torch_state(cache).items()}    # the graphs' own carried state
    initial = {k: v.clone() for k, v in state.items()}
    worst = 0.0
    for c in range(CHUNKS):
        kv = kv_cache(cache)
        t = ts[:, c * T:(c + 1) * T]
        graph_v = run(denoise, chunk_feeds(model, walk, span(c), t, state, kv))["velocity"]
        worst = max(worst, rel_err(graph_v, torch_pass(model, walk, span(c), t, cache)))
        if c == CHUNKS - 1:
            # Without the carried state the same pass is far off: the comparison above can fail.
            stale = run(denoise, chunk_feeds(model, walk, span(c), t, initial, kv))["velocity"]
            assert rel_err(stale, graph_v) > 100 * FP32_REL
        feeds = chunk_feeds(model, walk, span(c), torch.zeros(1, T), state, kv)
        before = kv.chunks_written
        torch_v = torch_pass(model, walk, span(c), torch.zeros(1, T), cache, write=True)
        feeds["kv_write"] = written_target(kv, before)
        out = run(cache_pass, feeds)
        worst = max(worst, rel_err(out["velocity"], torch_v))
        for name, want in torch_state(cache).items():
            got = out[f"new_state.{name}"]
            # Ring slots hold only written tokens; both sides leave the rest as they were.
            worst = max(worst, rel_err(got, want) if want.abs().sum() else float(got.abs().max()))
        state = {k: out[f"new_state.{k}"] for k in state}
    assert kv_cache(cache).ring_age == [CHUNKS - 1]        # the single ring slot was overwritten
    assert worst < FP32_REL, worst


def test_one_frame_chunks_are_refused(model, tmp_path):
    with pytest.raises(ex.ExportError, match="2 or more"):
        ex.export_chunk_graph(model, tmp_path / "x.onnx", 1, False)
    assert not list(tmp_path.iterdir())


def test_compact_quantization_scope_is_refused_and_leaves_the_model_intact(model, tmp_path):
    from quant import default_policy

    q = quantize(copy.deepcopy(model), default_policy("nvfp4", "compact"))
    before = {n: type(m) for n, m in q.named_modules()}
    with pytest.raises(ValueError, match=r"mlp\.t_conv.*official scope"):
        ex.export_chunk_graph(q, tmp_path / "x.onnx", T, False)
    assert {n: type(m) for n, m in q.named_modules()} == before
    assert not list(tmp_path.iterdir())


def test_functional_step_without_sink_writes_partial_ring_slots():
    """What the graphs trace, in torch: without the sink the ring slots are sized for the longer first chunk and
    later chunks fill them partly (the official config keeps the sink; this layout is checked here only)."""
    cfg = CFG.replace(sink=False, first_chunk_size=3, kv_cache_chunks=2)
    model = build_model(cfg, init="random", seed=5)
    ranges = chunk_ranges(3 + 2 * 3, 3, 2)
    walk = random_inputs(model, ranges[-1][1], seed=2)
    steps = {(T_, w): ex.ChunkStep(model, T_, w) for T_ in (3, 2) for w in (False, True)}
    cache = model.new_cache()
    state = {k: v.clone() for k, v in torch_state(cache).items()}
    worst = 0.0
    for rng in ranges:
        n = rng[1] - rng[0]
        kv = kv_cache(cache)
        t = walk[1][:, rng[0]:rng[1]]
        feeds = chunk_feeds(model, walk, rng, t, state, kv)
        with torch.no_grad():
            (v,) = steps[n, False](*(feeds[k] for k in steps[n, False].input_names))
        worst = max(worst, rel_err(v, torch_pass(model, walk, rng, t, cache)))
        feeds = chunk_feeds(model, walk, rng, torch.zeros(1, n), state, kv)
        before = kv.chunks_written
        torch_pass(model, walk, rng, torch.zeros(1, n), cache, write=True)
        feeds["kv_write"] = written_target(kv, before)
        with torch.no_grad():
            out = dict(zip(steps[n, True].output_names, steps[n, True](*(feeds[k] for k in steps[n, True].input_names))))
        state = {k: out[f"new_state.{k}"] for k in state}
        for name, want in torch_state(cache).items():
            worst = max(worst, rel_err(state[name], want) if want.abs().sum() else float(state[name].abs().max()))
    # Slots of 3 frames, now each holding a 2-frame chunk over the rest of an older one (masked as stale).
    S = cfg.tokens_per_frame
    assert kv_cache(cache).ring.shape[4] == 3 * S and kv_cache(cache).ring_tokens == [2 * S, 2 * S]
    assert worst < FP32_REL, worst


# ------------------------------------------------------------------------------------------------------------
# Quantized graphs
# ------------------------------------------------------------------------------------------------------------
def _stream(model, walk, chunks):
    """The torch streaming loop (one noisy pass + the cache pass per chunk); returns the cache."""
    cache = model.new_cache()
    for c in range(chunks):
        torch_pass(model, walk, span(c), walk[1][:, c * T:(c + 1) * T], cache)
        torch_pass(model, walk, span(c), torch.zeros(1, T), cache, write=True)
    return cache


@pytest.fixture(scope="module")
def nvfp4_bf16(model, tmp_path_factory):
    """The TensorRT form: NVFP4 layers, bf16 activations (the fp32-quantized model kept as the reference)."""
    q32 = quantize(copy.deepcopy(model), "nvfp4")
    q16 = copy.deepcopy(q32).to(torch.bfloat16)
    path = tmp_path_factory.mktemp("nvfp4") / "cache_t2.onnx"
    return q32, q16, path, ex.export_chunk_graph(q16, path, T, write_cache=True)


@pytest.fixture(scope="module")
def fp8_fp32(model, walk, tmp_path_factory):
    q = quantize(copy.deepcopy(model), "fp8")
    calibrate_fp8_inputs(q, lambda: _stream(q, walk, 2))
    path = tmp_path_factory.mktemp("fp8") / "cache_t2.onnx"
    return q, path, ex.export_chunk_graph(q, path, T, write_cache=True)


def expected_graph_layers(model, precision) -> set[str]:
    """The policy's layers that the chunk step runs: not the text K/V projection (once per prompt, on the host)
    and not the GDN gates that softmax blocks carry but never use."""
    selected = {name for name, _, _ in select_modules(model, precision)}
    off_graph = {f"blocks.{i}.cross_attn.kv_linear" for i in range(model.cfg.depth)}
    off_graph |= {f"blocks.{i}.attn.{g}" for i in model.cfg.softmax_blocks for g in ("beta_proj", "gate_proj")}
    assert off_graph <= selected
    return selected - off_graph


@pytest.mark.parametrize("precision", ["nvfp4", "fp8"])
def test_qdq_nodes_sit_on_exactly_the_policy_layers(precision, model, request):
    path, record = request.getfixturevalue({"nvfp4": "nvfp4_bf16", "fp8": "fp8_fp32"}[precision])[-2:]
    graph = onnx.load(str(path)).graph
    counts = collections.Counter((n.name.split("/")[0], n.op_type) for n in graph.node
                                 if n.op_type in ("QuantizeLinear", "DequantizeLinear"))
    layers = {layer for layer, _ in counts}
    expected = expected_graph_layers(model, precision)
    assert layers == expected and set(record.quantized_layers) == expected
    per_layer = {"nvfp4": {"DequantizeLinear": 2}, "fp8": {"QuantizeLinear": 1, "DequantizeLinear": 2}}[precision]
    for layer in layers:
        assert {op: counts[layer, op] for op in ("QuantizeLinear", "DequantizeLinear") if counts[layer, op]} \
            == per_layer, layer
    inits = {t.name: t for t in graph.initializer}
    nodes = {n.name: n for n in graph.node}
    for layer in layers:
        if precision == "nvfp4":
            w = inits[f"{layer}/weight_f4"]
            assert w.data_type == onnx.TensorProto.FLOAT4E2M1
            assert inits[f"{layer}/weight_scale"].data_type == onnx.TensorProto.FLOAT8E4M3FN
            assert list(inits[f"{layer}/weight_scale"].dims) == [w.dims[0], w.dims[1] // 16]
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in nodes[f"{layer}/weight_dq"].attribute}
            assert attrs == {"axis": -1, "block_size": 16}
            assert nodes[f"{layer}/weight_cast"].op_type == "Cast"     # fp32 dequantized weight -> bf16 MatMul
        else:
            assert inits[f"{layer}/weight_f8"].data_type == onnx.TensorProto.FLOAT8E4M3FN
            assert nodes[f"{layer}/input_q"].input[0] not in inits    # the activation itself is quantized
    # No float copy of a quantized layer's weight is left in the graph.
    assert not any(t.name.endswith(".weight") and t.name.rsplit(".", 1)[0] in expected for t in graph.initializer)


def test_nvfp4_weights_in_the_graph_dequantize_exactly(nvfp4_bf16):
    """Each layer's FLOAT4E2M1 weight, E4M3 block scales and tensor scale, run through its two DequantizeLinear
    nodes by ONNX's reference evaluator, give the quantized module's weight bit for bit."""
    q32, _, path, record = nvfp4_bf16
    model_proto = onnx.load(str(path))
    inits = {t.name: t for t in model_proto.graph.initializer}
    nodes = {n.name: n for n in model_proto.graph.node}
    for layer in record.quantized_layers:
        chain = [nodes[f"{layer}/scale_dq"], nodes[f"{layer}/weight_dq"]]
        used = [inits[i] for n in chain for i in n.input if i in inits]
        out = onnx.helper.make_tensor_value_info(f"{layer}/weight_dq", onnx.TensorProto.FLOAT, None)
        sub = onnx.helper.make_model(onnx.helper.make_graph(chain, "dq", [], [out], used),
                                     opset_imports=list(model_proto.opset_import))
        got = torch.from_numpy(ReferenceEvaluator(sub).run(None, {})[0])
        assert torch.equal(got, q32.get_submodule(layer).dequantize_weight(torch.float32)), layer


def test_bf16_nvfp4_graph_is_as_close_to_fp32_as_torch_bf16(nvfp4_bf16):
    """bf16 activations, fp32 GDN states. ONNX's reference evaluator rounds to bf16 after every op (torch inside
    fused kernels), so the graph may sit a little farther from the fp32 result than torch's bf16 run does."""
    import ml_dtypes

    q32, q16, path, _ = nvfp4_bf16
    graph = onnx.load(str(path)).graph
    types = {i.name: i.type.tensor_type.elem_type for i in graph.input}
    assert types["x"] == onnx.TensorProto.BFLOAT16 and types["state.b1.kv_sink"] == onnx.TensorProto.BFLOAT16
    assert types["state.b0.state"] == onnx.TensorProto.FLOAT
    step16, step32 = ex.ChunkStep(q16, T, True), ex.ChunkStep(q32, T, True)
    ins16 = step16.example_inputs(seed=1)
    ins32 = tuple(t.float() if t.dtype == torch.bfloat16 else t for t in ins16)
    with torch.no_grad():
        truth, torch16 = step32(*ins32), step16(*ins16)

    def as_np(t):
        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16) if t.dtype == torch.bfloat16 else t.numpy()

    outs = ReferenceEvaluator(str(path)).run(None, {n: as_np(t) for n, t in zip(step16.input_names, ins16)})
    for name, want, ref16, got in zip(step16.output_names, truth, torch16, outs):
        got = torch.from_numpy(np.asarray(got, dtype=np.float32))
        if want.abs().sum():
            assert rel_err(got, want) < max(3 * rel_err(ref16.float(), want), 1e-3), name


def test_fp8_graph_computes_the_quantized_model(fp8_fp32, walk):
    """A cache pass from a carried state (2 chunks in), in onnxruntime, against the FP8 torch model with the
    same calibrated static activation scales."""
    q, path, _ = fp8_fp32
    cache = _stream(q, walk, 2)
    kv = kv_cache(cache)
    feeds = chunk_feeds(q, walk, span(2), torch.zeros(1, T), {k: v.clone() for k, v in torch_state(cache).items()},
                        kv)
    before = kv.chunks_written
    torch_v = torch_pass(q, walk, span(2), torch.zeros(1, T), cache, write=True)
    feeds["kv_write"] = written_target(kv, before)
    out = run(session(path), feeds)
    assert rel_err(out["velocity"], torch_v) < FP8_REL
    for name, want in torch_state(cache).items():
        if want.abs().sum():
            assert rel_err(out[f"new_state.{name}"], want) < FP8_REL, name
