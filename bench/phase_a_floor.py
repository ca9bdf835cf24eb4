"""Would GDN phase A be faster with beta folded into its operands? (issue #5 experiment, session 8)

Phase A computes, per frame and head, the Gram products K~^T diag(b) K~, V^T diag(b) K~ and K^T diag(b) K (plus
K^T b). As shipped, its token loop takes the y tile through registers every step (scale by beta, cast to bf16,
store back to shared memory) before the wgmma, and waits for each wgmma. Given beta * K~ and beta * K instead
(`_launch_phase_a(..., folded=...)`), both tiles go from the async copies straight to the wgmma, which stays one
deep in flight. This script times both at the streaming shape (the main branch's three products, bf16, one chunk:
T = 3, S = 880, H = 20, D = 112), each replayed from a CUDA graph, plus the elementwise pass that would make the
folded operands (beta * K~, beta * K), and checks that the two give the same products. If folding wins by more
than its extra pass, the op's interface change is worth making (the prep or the runtime writing beta * k; the
camera scan's per-frame beta discount as a per-frame scale).

    python -m bench.phase_a_floor [--json out.json]          (GPU)
"""
from __future__ import annotations

import argparse
import json
import sys

import torch
import triton


def _graph_ms(fn) -> float:
    fn()
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    return triton.testing.do_bench(g.replay, warmup=25, rep=200, return_mode="median")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write the result as JSON")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("needs a CUDA GPU (the folded kernel's correctness is tested on the CPU: tests/unit/"
              "test_gdn_kernels.py::test_triton_phase_a_with_beta_folded_into_the_keys)", file=sys.stderr)
        return 2

    from kernels import gdn_triton as gt

    dev = torch.device("cuda")
    B, H, T, S, D = 1, 20, 3, 880, 112
    gen = torch.Generator(device=dev).manual_seed(0)
    k, k_rot, v = (torch.randn(B, H, T, S, D, generator=gen, device=dev).to(torch.bfloat16) for _ in range(3))
    beta = torch.rand(B, H, T, S, generator=gen, device=dev)
    cfg = gt._config(dev)
    n_sm = gt._device_info(dev)[0]
    folded = gt._fold_beta(k, k_rot, beta, True)
    shipped_ms = _graph_ms(lambda: gt._launch_phase_a(k, k_rot, v, beta, True, cfg, n_sm))
    folded_ms = _graph_ms(lambda: gt._launch_phase_a(k, k_rot, v, beta, True, cfg, n_sm, folded=folded))
    fold_ms = _graph_ms(lambda: gt._fold_beta(k, k_rot, beta, True))
    want = gt._launch_phase_a(k, k_rot, v, beta, True, cfg, n_sm)
    got = gt._launch_phase_a(k, k_rot, v, beta, True, cfg, n_sm, folded=folded)
    errs = {name: float((a - b).norm() / b.norm()) for name, a, b in zip(("A", "U", "Az", "uz"), got, want,
                                                                          strict=True)}
    result = {"gpu": torch.cuda.get_device_name(dev), "shape": [B, H, T, S, D], "launch": dict(cfg),
              "shipped_phase_a_ms": shipped_ms, "folded_phase_a_ms": folded_ms, "fold_pass_ms": fold_ms,
              "rel_err_folded_vs_shipped": errs}
    print(f"{result['gpu']}: phase A as shipped {shipped_ms * 1e3:.1f} us, with beta folded {folded_ms * 1e3:.1f} "
          f"us + {fold_ms * 1e3:.1f} us for the folding pass (rel err {max(errs.values()):.1e})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
