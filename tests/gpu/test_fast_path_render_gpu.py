"""`sana-wm render` on the GPU fast path (runtime.pipeline.FastPath): the embedded model in FP8 with calibrated
static scales, every block compiled, steady chunks replayed from a CUDA graph, against the same walk run eagerly
in bf16 (the model as stored)."""
import numpy as np
import pytest
import torch

from runtime.camera import actions_to_c2w
from runtime.cli import DEFAULT_IMAGE
from runtime.evaluate import psnr
from runtime.pipeline import EMBEDDED_DIR, FastPath, load_generator, open_session

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
              pytest.mark.skipif(not (EMBEDDED_DIR / "model.safetensors").is_file(),
                                 reason="the embedded weights are not in this checkout")]

WALK = actions_to_c2w("w-20,a-12,wd-20,l-16,w-40")


def _frames(fast: FastPath, chunks: int = 5):
    gen = load_generator("tiny-world", device="cuda", fast=fast)
    session = open_session(gen, str(DEFAULT_IMAGE), "a sunny meadow", seed=3)
    frames, graphs = [], set()
    for _ in range(chunks):
        frames.append(session.step(session.next_poses(WALK)).frames)
        if session._graph is not None:
            graphs.add(id(session._graph))
    session.close()
    return np.concatenate(frames), graphs


def test_fp8_compiled_graphed_render_matches_the_eager_bf16_one():
    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("FP8 tensor cores need compute capability >= 8.9")
    ref, none = _frames(FastPath())
    fast, graphs = _frames(FastPath(precision="fp8", compile=True, cuda_graphs=True))
    assert not none and len(graphs) == 1          # captured once, replayed for every steady chunk
    assert fast.shape == ref.shape
    assert min(psnr(a, b) for a, b in zip(fast[1:], ref[1:])) > 25.0
