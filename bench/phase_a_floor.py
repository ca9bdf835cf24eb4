"""How fast could GDN phase A be with both operands straight from memory? (issue #5 experiment, session 8)

Phase A computes, per frame and head, the Gram products K~^T diag(b) K~, V^T diag(b) K~ and K^T diag(b) K (plus
K^T b). Its token loop takes one operand tile through registers every step (scale by beta, cast to bf16, store
back to shared memory) before the wgmma, and waits for each wgmma. `_plain_gram_kernel` below computes X^T Y
with the same grid (products x row blocks x frames), tile sizes and pipeline depth, both operands loaded as
stored: what phase A would cost if the prep wrote beta-scaled keys (b * K~, b * K) for it. The script times the
shipped phase A (the main branch's three products, bf16 inputs, one streaming chunk: T = 3, S = 880, H = 20,
D = 112) and the plain kernel, each replayed from a CUDA graph, and checks the plain kernel against torch.

    python -m bench.phase_a_floor [--json out.json]          (GPU)
    TRITON_INTERPRET=1 python -m bench.phase_a_floor --check (CPU: the plain kernel against torch, small shape)
"""
from __future__ import annotations

import argparse
import json
import sys

import torch
import triton
import triton.language as tl


@triton.jit
def _plain_gram_kernel(p_x, p_y, p_out, stride_xf, stride_xs, stride_yf, stride_ys, S, DX, DY,
                       BLOCK_S: tl.constexpr, BX: tl.constexpr, BY: tl.constexpr, NROW: tl.constexpr,
                       NUM_STAGES: tl.constexpr):
    """out[f] = X[f]^T Y[f] for X, Y [F, S, D]: program (row block, f) computes rows o_x of the [BX, BY] product."""
    i_r = tl.program_id(0)
    i_f = tl.program_id(1)
    BXR: tl.constexpr = BX // NROW
    o_x = i_r * BXR + tl.arange(0, BXR)
    o_y = tl.arange(0, BY)
    o_s = tl.arange(0, BLOCK_S)
    p_xf = p_x + i_f.to(tl.int64) * stride_xf
    p_yf = p_y + i_f.to(tl.int64) * stride_yf
    b_acc = tl.zeros([BXR, BY], dtype=tl.float32)
    for s0 in tl.range(0, S, BLOCK_S, num_stages=NUM_STAGES):
        o_t = s0 + o_s
        m_s = o_t < S
        b_x = tl.load(p_xf + o_t[:, None] * stride_xs + o_x[None, :], mask=m_s[:, None] & (o_x < DX)[None, :],
                      other=0.0)
        b_y = tl.load(p_yf + o_t[:, None] * stride_ys + o_y[None, :], mask=m_s[:, None] & (o_y < DY)[None, :],
                      other=0.0)
        b_acc += tl.dot(tl.trans(b_x), b_y)
    tl.store(p_out + i_f.to(tl.int64) * BX * BY + o_x[:, None] * BY + o_y[None, :], b_acc)


def plain_gram(x: torch.Tensor, y: torch.Tensor, nrow: int, block_s: int, num_stages: int, warps: int
               ) -> torch.Tensor:
    """X^T Y per leading index of x, y [F, S, D] (padded to powers of two), fp32 [F, BX, BY]."""
    F, S, DX = x.shape
    DY = y.shape[-1]
    BX, BY = max(16, triton.next_power_of_2(DX)), max(16, triton.next_power_of_2(DY))
    out = torch.empty(F, BX, BY, dtype=torch.float32, device=x.device)
    _plain_gram_kernel[(nrow, F)](x, y, out, x.stride(0), x.stride(1), y.stride(0), y.stride(1), S, DX, DY,
                                  BLOCK_S=block_s, BX=BX, BY=BY, NROW=nrow, NUM_STAGES=num_stages, num_warps=warps)
    return out


def check(device: str = "cpu") -> float:
    """Relative error of the plain kernel against torch at a small odd shape (S not a block multiple)."""
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(6, 40, 24, generator=gen, device=device)
    y = torch.randn(6, 40, 24, generator=gen, device=device)
    out = plain_gram(x, y, nrow=2, block_s=16, num_stages=1, warps=4)[:, :24, :24]
    want = x.transpose(1, 2) @ y
    return float((out - want).norm() / want.norm())


def _graph_ms(fn) -> float:
    fn()
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    return triton.testing.do_bench(g.replay, warmup=25, rep=200, return_mode="median")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check the plain kernel against torch (CPU ok)")
    parser.add_argument("--json", help="write the result as JSON")
    args = parser.parse_args(argv)
    if args.check:
        err = check("cuda" if torch.cuda.is_available() else "cpu")
        print(f"plain Gram kernel vs torch: rel err {err:.2e}")
        return 0 if err < 1e-2 else 1
    if not torch.cuda.is_available():
        print("needs a CUDA GPU (use --check on the CPU)", file=sys.stderr)
        return 2

    from kernels import gdn_triton as gt

    dev = torch.device("cuda")
    B, H, T, S, D = 1, 20, 3, 880, 112
    gen = torch.Generator(device=dev).manual_seed(0)
    k, k_rot, v = (torch.randn(B, H, T, S, D, generator=gen, device=dev).to(torch.bfloat16) for _ in range(3))
    beta = torch.rand(B, H, T, S, generator=gen, device=dev)
    cfg = gt._config(dev)
    n_sm = gt._device_info(dev)[0]
    shipped_ms = _graph_ms(lambda: gt._launch_phase_a(k, k_rot, v, beta, True, cfg, n_sm))

    # The same three products with beta folded into the y operands: A = K~^T (b K~), U = V^T (b K~), Az = K^T (b K).
    kb_rot, kb = (t * beta[..., None].to(t.dtype) for t in (k_rot, k))
    x = torch.stack([k_rot, v, k]).reshape(3 * B * H * T, S, D)
    y = torch.stack([kb_rot, kb_rot, kb]).reshape(3 * B * H * T, S, D)
    nrow = gt.phase_a_rows(3 * B * H * T, 128, 128, cfg, n_sm)
    block_s, stages, warps = cfg["a_block_s_bf16"], cfg["a_stages"], cfg["a_warps"]
    plain_ms = _graph_ms(lambda: plain_gram(x, y, nrow, block_s, stages, warps))
    out = plain_gram(x, y, nrow, block_s, stages, warps)[:, :D, :D]
    want = x.float().transpose(1, 2) @ y.float()
    err = float((out - want).norm() / want.norm())
    result = {"gpu": torch.cuda.get_device_name(dev), "shape": [B, H, T, S, D], "launch": dict(cfg), "nrow": nrow,
              "shipped_phase_a_ms": shipped_ms, "plain_gram_ms": plain_ms, "plain_rel_err": err}
    print(f"{result['gpu']}: shipped phase A {shipped_ms * 1e3:.1f} us, operands straight from memory "
          f"{plain_ms * 1e3:.1f} us (rel err {err:.1e}; nrow {nrow}, {block_s} tokens per step)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
