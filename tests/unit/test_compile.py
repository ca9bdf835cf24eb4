"""The compiled streaming step: every block call of a chunk runs compiled code, as one graph, and chunks in
steady state compile nothing (issue #10: "a test fails on any recompile across chunks").

A counting backend stands in for inductor (same dynamo tracing, guards and recompile rules; no code generation, so
it runs on the CPU in seconds). tests/gpu runs the inductor build.
"""
from __future__ import annotations

import pytest
import torch

from runtime.camera import actions_to_c2w
from runtime.model import build_model, compile_blocks
from runtime.session import WorldSession
from tests.model_inputs import intrinsics_latent


class CountingBackend:
    """A torch.compile backend that runs the traced graph as is and counts compilations and graph calls."""

    def __init__(self):
        self.compiles = 0
        self.calls = 0

    def __call__(self, gm, example_inputs):
        self.compiles += 1

        def run(*args):
            self.calls += 1
            return gm.forward(*args)

        return run


@pytest.fixture
def fresh_dynamo():
    import torch._dynamo

    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def test_steady_chunks_run_every_block_compiled_without_recompiles(fresh_dynamo):
    import torch._dynamo.config as dynamo_config

    net = build_model("tiny-world", init="random", seed=0)
    backend = CountingBackend()
    compile_blocks(net, backend=backend)
    cfg = net.cfg
    g = torch.Generator().manual_seed(0)
    text = net.prepare_text(torch.randn(1, cfg.text_max_length, cfg.caption_channels, generator=g),
                            torch.ones(1, cfg.text_max_length))
    first = torch.randn(1, cfg.in_channels, 1, cfg.latent_height, cfg.latent_width, generator=g)
    session = WorldSession(net, text, first_latent=first, intrinsics_latent=intrinsics_latent(cfg), seed=0)
    poses = actions_to_c2w("w-60,l-60,wd-80")
    block_calls_per_chunk = cfg.depth * len(cfg.denoising_timesteps)   # denoising passes + the cache pass

    def step():
        raw = session.next_raw_frames()
        session.step(poses[raw.start:raw.stop])

    for _ in range(3):   # first chunk, the sink, the full ring: every variant compiled once
        step()
    assert session.cache.steady
    compiled = backend.compiles
    with dynamo_config.patch(error_on_recompile=True):
        for _ in range(3):
            backend.calls = 0
            step()
            # Each block call is exactly one compiled graph: no call fell back to eager, none broke in two.
            assert backend.calls == block_calls_per_chunk
    assert backend.compiles == compiled
