"""Helpers shared by the GDN / prep kernel tests and `bench/kernels.py`: random inputs with the model's
shapes and scales, the chunk-causal chunk table, and ahead-of-time resource checks of the kernels
(`python -m kernels.gdn_triton_testing --resources`, no GPU needed).

Tolerances are not here: the tests use the shared `tests/tolerances.py`.
"""
from __future__ import annotations

import contextlib

import torch
from torch import Tensor

__all__ = ["H100_SHARED_BYTES", "chunk_causal_chunks", "compile_resources", "default_resource_cases", "gdn_inputs",
           "prep_inputs", "random_rigid", "tf32_matmuls", "ucpe_inputs"]


@contextlib.contextmanager
def tf32_matmuls():
    """Run PyTorch fp32 matmuls in TF32: the same-precision PyTorch for the CUDA kernels (TF32 dots)."""
    prev = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = prev


def chunk_causal_chunks(T: int, chunk: int = 3) -> tuple[tuple[int, int], ...]:
    """Chunk-causal frame chunks (spec 2.4): starts [0] + range(chunk + 1, T, chunk), a tail shorter than
    `chunk` merged into the previous chunk. T=121 -> (0, 4), (4, 7), ..., (118, 121): 40 chunks."""
    starts = [0, *range(chunk + 1, T, chunk)]
    ends = [*starts[1:], T]
    if len(starts) > 1 and ends[-1] - starts[-1] < chunk:
        starts.pop()
        ends.pop(-2)
    return tuple(zip(starts, ends, strict=True))


def _rotate(x: Tensor, gen: torch.Generator) -> Tensor:
    theta = torch.rand(x.shape[2:-1] + (x.shape[-1] // 2,), generator=gen, device=x.device) * 6.2832
    x0, x1 = x[..., 0::2], x[..., 1::2]
    c, s = theta.cos(), theta.sin()
    return torch.stack((x0 * c - x1 * s, x0 * s + x1 * c), dim=-1).flatten(-2)


def gdn_inputs(B: int, H: int, T: int, S: int, D: int, Dv: int | None = None, *, device="cpu",
               dtype=torch.float32, seed: int = 0, initial_state: bool = False) -> dict:
    """Random inputs of the GDN scans, scaled like the model (spec 2.2) so the recurrence is stable.

    q, k >= 0 (post-ReLU), k scaled by (D S)^-1/2, q_rot / k_rot rotated by random angles, beta in (0, 1),
    g in (0.5, 1), never zero. Returns keyword arguments of `gdn_scan` / `gdn_bidirectional` (without
    the direction flags); tensors in `dtype`, the initial state always fp32.
    """
    Dv = Dv or D
    gen = torch.Generator(device=device).manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, device=device)

    key_scale = (D * S) ** -0.5
    q = torch.relu(randn(B, H, T, S, D)) + 1e-3
    k = (torch.relu(randn(B, H, T, S, D)) + 1e-3) * key_scale
    inputs = {
        "q": q, "k": k, "v": randn(B, H, T, S, Dv),
        "beta": torch.sigmoid(randn(B, H, T, S)),
        "g": 0.5 + 0.5 * torch.rand(B, H, T, generator=gen, device=device),
        "q_rot": _rotate(q, gen), "k_rot": _rotate(k, gen),
    }
    inputs = {name: t.to(dtype) for name, t in inputs.items()}
    if initial_state:
        inputs["initial_state"] = (0.1 * randn(B, H, Dv, D), torch.rand(B, H, D, generator=gen, device=device))
    return inputs


def prep_inputs(B: int, T: int, S: int, H: int, D: int, *, device="cpu", dtype=torch.float32,
                seed: int = 0) -> tuple[tuple, dict]:
    """(args, kwargs) of `gdn_prep` with random projections, weights and RoPE tables."""
    gen = torch.Generator(device=device).manual_seed(seed)
    C = H * D
    q = torch.randn(B, T, S, C, generator=gen, device=device).to(dtype)
    k = torch.randn(B, T, S, C, generator=gen, device=device).to(dtype)
    q_weight = 0.5 + torch.rand(C, generator=gen, device=device)
    k_weight = 0.5 + torch.rand(C, generator=gen, device=device)
    theta = torch.rand(T, S, D // 2, generator=gen, device=device) * 6.2832
    kwargs = {"num_heads": H, "key_scale": (D * S) ** -0.5}
    return (q, k, q_weight, k_weight, theta.cos(), theta.sin()), kwargs


def random_rigid(*batch: int, device="cpu", gen: torch.Generator | None = None) -> Tensor:
    """Random rigid 4x4 transforms [[R, t], [0, 1]] of shape [*batch, 4, 4] (fp32)."""
    R, _ = torch.linalg.qr(torch.randn(*batch, 3, 3, generator=gen, device=device))
    P = torch.zeros(*batch, 4, 4, device=device)
    P[..., :3, :3] = R
    P[..., :3, 3] = torch.randn(*batch, 3, generator=gen, device=device)
    P[..., 3, 3] = 1.0
    return P


def ucpe_inputs(B: int, H: int, T: int, S: int, D: int, *, device="cpu", dtype=torch.float32,
                seed: int = 0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(x, P, cam_cos, cam_sin) of `ucpe_prep`."""
    gen = torch.Generator(device=device).manual_seed(seed)
    x = torch.randn(B, H, T, S, D, generator=gen, device=device).to(dtype)
    P = random_rigid(B, T, S, device=device, gen=gen)
    theta = torch.rand(T, S, D // 4, generator=gen, device=device) * 6.2832
    return x, P, theta.cos(), theta.sin()


def compile_resources(kernel, constexprs: dict, arg_types: dict | None = None, *, num_warps: int,
                      num_stages: int = 3, arch: int = 90, divisible: tuple[str, ...] = ()) -> dict:
    """Compile a @triton.jit kernel ahead of time for sm_`arch` (no GPU needed: triton ships ptxas) and report
    {"shared": bytes, "registers": per thread, "spill_bytes": stack bytes}. Runtime arguments default to
    fp32 pointers (names starting with p_), fp32 scalars (eps, key_scale) and i32 otherwise.

    Pointers are marked 16-byte aligned, and the int arguments named in `divisible` divisible by 16, as the JIT
    specializes them at run time: without those hints the compiler cannot vectorize masked bf16 tile loads or
    make them asynchronous, and the code (and its registers) differ from what runs on the GPU."""
    import os
    import re
    import subprocess
    import tempfile

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    arg_types = arg_types or {}
    sig = {}
    for name in kernel.arg_names:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name in arg_types:
            sig[name] = arg_types[name]
        elif name.startswith("p_"):
            sig[name] = "*fp32"
        elif name in ("eps", "key_scale"):
            sig[name] = "fp32"
        else:
            sig[name] = "i32"
    consts = {(kernel.arg_names.index(k),): v for k, v in constexprs.items()}
    attrs = {(i,): [["tt.divisibility", 16]] for i, name in enumerate(kernel.arg_names)
             if sig[name] != "constexpr" and (sig[name].startswith("*") or name in divisible)}
    compiled = triton.compile(ASTSource(fn=kernel, signature=sig, constexprs=consts, attrs=attrs),
                              target=GPUTarget("cuda", arch, 32),
                              options={"num_warps": num_warps, "num_stages": num_stages})
    out = {"shared": compiled.metadata.shared, "registers": None, "spill_bytes": None}
    cuobjdump = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    if not os.path.exists(cuobjdump):
        return out
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(compiled.asm["cubin"])
        f.flush()
        usage = subprocess.run([cuobjdump, "-res-usage", f.name], capture_output=True, text=True,
                               check=False).stdout
    m = re.search(r"REG:(\d+).*?STACK:(\d+)", usage)
    if m:
        out["registers"], out["spill_bytes"] = int(m.group(1)), int(m.group(2))
    return out


STREAMING_DIVISIBLE = tuple(f"stride_{t}{d}" for t in ("q", "k", "kr", "v", "qr") for d in ("b", "h", "t", "s")) + (
    "S", "D", "DK", "DV", "M", "s_an", "s_ah", "s_aw", "s_on", "s_oh", "s_ow", "s_wr", "s_ws", "N", "s_qb", "s_qh",
    "s_qm", "s_qsb", "s_qsh", "s_kb", "s_kh", "s_kn", "s_ksb", "s_ksh", "s_vb", "s_vh", "s_vn", "s_vd", "s_ob", "s_oh",
    "s_om", "C", "s_shift_b", "s_shift_t", "s_scale_b", "s_scale_t")
"""Int arguments divisible by 16 at the streaming shape (S = 880, D = 112 and the strides of [B, H, T, S, D]
tensors; the depthwise + GLU kernel's M = 6720 and channels-last strides; the INT8 attention's 2640 queries, 8800
keys and the strides of its operands; C = 2240 and the adaLN modulation's strides), which the JIT specializes on;
beta's strides (H = 20 per token) and T are not."""

H100_SHARED_BYTES = 227 * 1024
"""Largest dynamic shared memory of one H100 thread block (a config above it fails to launch)."""


def default_resource_cases() -> list[tuple]:
    """(name, kernel, constexprs, arg types, num_warps, num_stages) of every kernel at D = 112 (BK = 128)
    with the default launch config, mirroring the choices of `gdn_triton._run` and `prep_triton`, on the model's
    path: bf16 inputs (phase A's bf16 Gram products, phase C's TF32 unless SANA_WM_GDN_PHASE_C=bf16). (fp32 inputs take 3xTF32 in phases A and C; phase C then spills about 0.5 KB
    per thread, measured as 1.14 -> 1.48 ms for the fp32 layer on an H100, the price of fp32 accuracy.)"""
    from kernels import gdn_triton as gt
    from kernels import prep_triton as pt

    cfg = gt.LAUNCH_CONFIGS["default"]
    bf16_in = {"p_q": "*bf16", "p_k": "*bf16", "p_v": "*bf16", "p_kr": "*bf16"}
    cases = []
    for has_z in (True, False):
        for nrow in (1, 2, 8):
            cases.append((f"phase_a z={has_z} nrow={nrow}", gt._gdn_phase_a_kernel,
                          {"BLOCK_S": cfg["a_block_s_bf16" if gt._PREC_PHASE_A_LOW == "bf16" else "a_block_s"],
                           "BK": 128, "BV": 128, "NROW": nrow, "SPLIT": 1, "HAS_Z": has_z,
                           "NUM_STAGES": cfg["a_stages"], "PRECISION": gt._PREC_PHASE_A_LOW},
                          bf16_in, cfg["a_warps"], 3))
        cases.append((f"phase_b z={has_z}", gt._gdn_phase_b_kernel,
                      {"BK": 128, "BV": 128, "BLOCK_VB": cfg["b_block_v"], "HAS_Z": has_z, "DO_FWD": True,
                       "DO_BWD": True, "HAS_H0": True, "STORE_HT": True, "HAS_RESET": True,
                       "PRECISION": gt._PREC_SCAN}, {}, cfg["b_warps"], cfg["b_stages"]))
        for combine, out_ucpe in ((True, False), (False, False), (True, not has_z)):
            half = out_ucpe and cfg["c_block_s"] > 16      # as gdn_triton._run
            cases.append((f"phase_c z={has_z} combine={combine} out_ucpe={out_ucpe}", gt._gdn_phase_c_kernel,
                          {"BLOCK_S": cfg["c_block_s"] // (2 if half else 1),
                           "TILES": cfg["c_tiles"] * (2 if half else 1), "BK": 128, "BV": 128,
                           "HAS_Z": has_z, "NDIR": 2 if combine else 1, "COMBINE": combine, "OUT_UCPE": out_ucpe,
                           "PRECISION": gt._PREC_PHASE_C_LOW, "TOKEN_MAJOR": combine},
                          {"p_q": "*bf16", "p_qr": "*bf16", "p_out": "*bf16" if combine else "*fp32"},
                          cfg["c_warps"], cfg["c_stages"]))
    heads = pt._heads_per_step(20)        # the model's 20 heads, as the launchers pick
    token = {"BLOCK_H": heads, "BLOCK_D": 128, "BLOCK_C": pt._rms_block(2240), "RELU": True}
    cases.append(("gdn_prep", pt._gdn_prep_kernel, token, bf16_in, pt._prep_warps(heads * 128), 3))
    cases.append(("ucpe_qkv_prep", pt._ucpe_qkv_prep_kernel, token, bf16_in, pt._prep_warps(heads * 128), 3))
    cases.append(("ucpe_prep", pt._ucpe_prep_kernel, {"BLOCK_H": 32, "BLOCK_D": 128, "MODE": 1}, {},
                  pt._prep_warps(32 * 128), 3))
    # The FFN's depthwise conv + GLU with its default launch, E4M3 out as the FP8 static path runs it (bf16 taps
    # read tap-major: unit channel stride). Its former default, tiles 16 x 128, spills in this form.
    from kernels import glu_conv_triton as gc

    kind, size, block_c, warps, silu_inside = gc.CONFIG
    types = {"p_act": "*bf16", "p_w": "*bf16", "p_b": "*bf16", "p_out": "*fp8e4nv"}
    common = {"HAS_BIAS": True, "SILU_IN": 2 if silu_inside else 0, "OUT_FP8": True, "BLOCK_C": block_c, "s_wc": 1}
    if kind in gc.TILES_KINDS:
        cases.append(("depthwise_glu", gc._depthwise_glu_tiles_kernel,
                      {**common, "BLOCK_P": size, "ROW_LOOP": kind != "tiles", "ROW_STAGES": gc.TILES_KINDS[kind]},
                      types, warps, 3))
    else:   # a rows kind, W = 40 columns: rows of 64 lanes, or strips of n columns ("_w<n>": 40 / n programs)
        rows_kind, strip = gc._split_strip(kind)
        if rows_kind not in gc.ROWS_KINDS:
            raise ValueError(f"glu_conv_triton.CONFIG: unknown launch kind {kind!r}")
        block_w = 64 if strip is None else strip
        cases.append(("depthwise_glu", gc._depthwise_glu_rows_kernel,
                      {**common, "ROWS": size, "BLOCK_W": block_w, "GATHER": rows_kind != "rows",
                       "ROW_STAGES": gc.ROWS_KINDS[rows_kind], "STRIPS": -(-40 // block_w)}, types, warps, 3))
    # The blocks' adaLN inputs (kernels.norm_modulate_triton) at C = 2240 (a 2048 + 256-lane pair of tiles), with the
    # table rows: the attention's (normed + codes) and the FFN's (residual add + codes).
    from kernels import norm_modulate_triton as nm

    ln_rows, ln_warps, *ln_persistent = nm.CONFIG
    ln_programs, ln_stages = ln_persistent or (0, 1)
    ln_types = {name: "*bf16" for name in ("p_x", "p_res", "p_shift", "p_scale", "p_shift_bias", "p_scale_bias",
                                            "p_sum", "p_normed")}
    ln_types.update({"p_codes": "*fp8e4nv", "p_out_scale": "*fp32"})
    for residual in (False, True):
        cases.append((f"ln_modulate residual={residual}", nm._ln_modulate_kernel,
                      {"HAS_RES": residual, "HAS_SHIFT_BIAS": True, "HAS_SCALE_BIAS": True,
                       "WRITE_NORMED": not residual, "WRITE_CODES": True, "ROWS": ln_rows, "BLOCK_C": 2048,
                       "SPLIT": True, "BLOCK_C2": 256, "PERSISTENT": bool(ln_programs), "STAGES": ln_stages},
                      ln_types, ln_warps, ln_stages))
    # The softmax blocks' INT8-score / E4M3-value attention (not yet on the model's path) at D = 112.
    from kernels import attention_int8_triton as at

    launch = at.CONFIG
    cases.append(("attention_int8", at._attention_int8_kernel,
                  {"s_vn" if launch.v_fp8 else "s_vd": 1,    # the JIT specializes a unit stride
                   "D": 112, "DP": 128, "BLOCK_M": launch.block_m, "BLOCK_N": launch.block_n,
                   "TILE_SCALES": launch.tile_scales, "V_FP8": launch.v_fp8, "V_DOT_FP16": False},
                  {"p_q": "*i8", "p_k": "*i8", "p_v": "*fp8e4nv" if launch.v_fp8 else "*bf16", "p_out": "*bf16",
                   "p_qs": "*fp32", "p_ks": "*fp32", "p_vs": "*fp32", "qk_scale": "fp32"}, launch.warps,
                  launch.stages))
    return cases


def _main(argv: list[str]) -> int:
    import json

    if argv != ["--resources"]:
        print("usage: python -m kernels.gdn_triton_testing --resources   (TRITON_INTERPRET unset)")
        return 2
    report = {"arch": "sm_90", "shared_limit": H100_SHARED_BYTES, "kernels": {}}
    try:
        cases = default_resource_cases()
        first = cases[0]
        report["kernels"][first[0]] = compile_resources(first[1], first[2], first[3], num_warps=first[4],
                                                        num_stages=first[5], divisible=STREAMING_DIVISIBLE)
    except (ImportError, AttributeError, TypeError, KeyError) as exc:
        # An ahead-of-time compile API this triton version does not have: nothing to check here.
        print(json.dumps({"skipped": f"{type(exc).__name__}: {exc}"}))
        return 0
    for name, kernel, constexprs, types, warps, stages in cases[1:]:
        report["kernels"][name] = compile_resources(kernel, constexprs, types, num_warps=warps, num_stages=stages,
                                                    divisible=STREAMING_DIVISIBLE)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(_main(sys.argv[1:]))
