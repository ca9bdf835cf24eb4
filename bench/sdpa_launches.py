"""How cuDNN runs the softmax blocks' attention: kernel launches and time per call, by operand layout.

    python -m bench.sdpa_launches [--json OUT]      # needs CUDA

Round 30's profile counted 5 cuDNN SDPA kernel launches per softmax block call (125 per chunk for 25 calls, 187 us
each): one attention of both branches (main + camera, a batch of 2 x 20 heads, 2640 queries over 8800 keys, D = 112;
in steady state the keys and values are the stream cache's whole packed buffer, contiguous). This times that call and
other layouts of the same work (the batch folded into 40 heads, one branch alone, D padded to 128) and counts the
kernels each launches, to see whether the launch split (and its tail waves) comes from the shape (round 34: no, one
kernel per call; the profile's average mixed in the cross-attention). Then the cross-attention to the 300 text
tokens through each SDPA backend (`run_cross`).
"""
from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F


def _launches(fn) -> tuple[int, list[str]]:
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    names = [e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA
             and not e.name.startswith("## ")]
    return len(names), sorted(set(names))


def _ms(fn, repeats: int = 30, graphed: bool = False) -> float:
    """Milliseconds per call of `fn`, `repeats` calls back to back; `graphed` replays them from one CUDA graph, so
    a call of a few tens of microseconds is timed on the GPU rather than by the CPU's dispatch (eager calls of the
    cross-attention are launch-bound: round 35 timed ~80 us per call eagerly against ~30 us in the graphed model)."""
    for _ in range(3):
        fn()
    if graphed:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(repeats):
                fn()
        graph.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    if graphed:
        graph.replay()
    else:
        for _ in range(repeats):
            fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / repeats


def run(queries: int = 2640, keys: int = 8800, heads: int = 20, dim: int = 112) -> list[dict]:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    dev, dt = torch.device("cuda"), torch.bfloat16
    gen = torch.Generator(device=dev).manual_seed(0)
    q = torch.randn(2, heads, queries, dim, device=dev, dtype=dt, generator=gen)
    packed = torch.randn(4, heads, keys, dim, device=dev, dtype=dt, generator=gen)   # [K main, K cam, V main, V cam]
    k, v = packed[0:2], packed[2:4]                                                   # as the cache hands them
    scale = dim ** -0.5
    cases = {
        "batch 2 x 20 heads (the model's call)": (q, k, v),
        "batch 1 x 40 heads": tuple(t.reshape(1, 2 * heads, *t.shape[2:]) for t in (q, k, v)),
        "one branch: batch 1 x 20 heads": (q[:1], k[:1], v[:1]),
        "batch 2 x 20 heads, D zero-padded to 128": tuple(F.pad(t, (0, 128 - dim)) for t in (q, k, v)),
    }
    rows = []
    with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
        for name, (a, b, c) in cases.items():
            def call(a=a, b=b, c=c):
                return F.scaled_dot_product_attention(a, b, c, scale=scale)

            n, kernels = _launches(call)
            ms = _ms(call)
            rows.append({"case": name, "ms": round(ms, 4), "launches": n, "kernels": kernels})
            print(f"{ms:8.4f} ms  {n:3d} launches  {name}  ({', '.join(k[:60] for k in kernels)})")
    return rows


def run_cross(queries: int = 2640, keys: int = 300, heads: int = 20, dim: int = 112) -> list[dict]:
    """The cross-attention to the text as the blocks call it (100 calls per chunk; round 30: ~30 us each, ~240
    TFLOP/s: 300 keys are few tiles per query block), q and the cached text K / V as head-transposed views of
    token-major tensors, through each SDPA backend."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    dev, dt = torch.device("cuda"), torch.bfloat16
    gen = torch.Generator(device=dev).manual_seed(1)
    q = torch.randn(1, queries, heads, dim, device=dev, dtype=dt, generator=gen).transpose(1, 2)
    k, v = (torch.randn(1, keys, heads, dim, device=dev, dtype=dt, generator=gen).transpose(1, 2) for _ in range(2))
    want = F.scaled_dot_product_attention(q.float(), k.float(), v.float())
    rows = []
    for backend in (SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION):
        def call(backend=backend):
            with sdpa_kernel(backend):
                return F.scaled_dot_product_attention(q, k, v)

        try:
            err = float((call().float() - want).norm() / want.norm())
        except RuntimeError as e:   # a backend that does not take this shape / layout
            rows.append({"case": f"cross {backend.name}", "error": str(e).splitlines()[0]})
            print(f"   cross {backend.name}: not available ({str(e).splitlines()[0][:80]})")
            continue
        n, kernels = _launches(call)
        ms = _ms(call, repeats=100, graphed=True)
        rows.append({"case": f"cross {backend.name}", "ms": round(ms, 4), "launches": n, "rel_err": err,
                     "kernels": kernels})
        print(f"{ms:8.4f} ms  {n:3d} launches  cross-attention {backend.name} (rel. err {err:.1e})  "
              f"({', '.join(name[:60] for name in kernels)})")
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", help="write the rows here")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench.sdpa_launches: needs a CUDA GPU")
        return 1
    rows = run() + run_cross()
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
