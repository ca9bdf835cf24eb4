"""The fast path on a GPU: the CUDA-graph chunk step equals the eager step, and is captured exactly once."""
import pytest
import torch

from runtime.camera import actions_to_c2w
from runtime.model import build_model
from runtime.pipeline import latent_intrinsics
from runtime.session import WorldSession
from tests.tolerances import BF16_REL, FP32_REL, rel_err

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

POSES = actions_to_c2w("w-40,wd-30,l-20,w-40,ai-20,w-40,wd-30,l-20,w-40,ai-20,none-400")


def _walk(model, graphs: bool, chunks: int):
    cfg = model.cfg
    dev, dt = next(model.parameters()).device, next(model.parameters()).dtype
    g = torch.Generator().manual_seed(0)
    first = torch.randn(1, cfg.in_channels, 1, cfg.latent_height, cfg.latent_width, generator=g).to(dev, dt)
    emb = torch.randn(1, cfg.text_max_length, cfg.caption_channels, generator=g).to(dev, dt)
    text = model.prepare_text(emb, torch.ones(1, cfg.text_max_length, device=dev))
    s = WorldSession(model, text, first_latent=first, intrinsics_latent=latent_intrinsics(cfg), seed=3,
                     cuda_graphs=graphs)
    out, graphs_seen = [], set()
    for _ in range(chunks):
        raw = s.next_raw_frames()
        out.append(s.step(POSES[raw.start:raw.stop]).latents.float())
        if s._graph is not None:
            graphs_seen.add(id(s._graph))
    return out, graphs_seen


@pytest.mark.parametrize("config,dtype,tol", [("tiny-world", torch.float32, FP32_REL),
                                              ("sana-wm-streaming", torch.bfloat16, BF16_REL)])
def test_graph_step_equals_eager_and_captures_once(config, dtype, tol):
    model = build_model(config, device="cuda", dtype=dtype, init="random", seed=1)
    chunks = 6 if config == "tiny-world" else 4
    eager, _ = _walk(model, False, chunks)
    graphed, seen = _walk(model, True, chunks)
    assert len(seen) == 1   # one capture, replayed for every steady-state chunk
    for a, b in zip(graphed, eager):
        assert rel_err(a, b) < tol


def test_full_config_fast_path_equals_the_reference_kernels(monkeypatch):
    """The full 2.6B config in bf16 over 3 chunks: the Triton kernels (bf16 prep outputs, bf16 phase-A Gram
    products) against the PyTorch reference kernels (fp32 scans) on the same weights, to bf16 tolerance."""
    model = build_model("sana-wm-streaming", device="cuda", dtype=torch.bfloat16, init="random", seed=1)
    fast, _ = _walk(model, False, 3)
    monkeypatch.setenv("SANA_WM_KERNELS", "reference")
    reference, _ = _walk(model, False, 3)
    for a, b in zip(fast, reference):
        assert rel_err(a, b) < BF16_REL


def test_compiled_graph_step_equals_eager_full_config():
    """The benchmark's fast path (every block compiled by inductor, the steady chunk replayed from one CUDA graph)
    equals the eager step on the full 2.6B config in bf16 over 4 chunks (the first, the sink, the full ring, a
    replay). The softmax blocks compile too since session 6 (packed K/V context written in place);
    tests/unit/test_compile.py checks on the CPU that a steady chunk recompiles nothing."""
    import torch._dynamo

    from runtime.model import compile_blocks

    torch._dynamo.reset()
    model = build_model("sana-wm-streaming", device="cuda", dtype=torch.bfloat16, init="random", seed=1)
    eager, _ = _walk(model, False, 4)
    compile_blocks(model)
    try:
        fast, seen = _walk(model, True, 4)
    finally:
        torch._dynamo.reset()
    assert len(seen) == 1
    for a, b in zip(fast, eager):
        assert rel_err(a, b) < BF16_REL
