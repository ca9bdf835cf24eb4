"""`sana-wm info`: parameter counts by module group, memory, block layout, and which components are local."""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

GROUPS = (
    ("embedders", ("x_embedder", "t_embedder", "t_block", "y_embedder", "attention_y_norm", "raymap_embedder",
                   "plucker_embedder", "final_layer")),
    ("camera branch", ("_cam", "plucker_proj")),
    ("self-attention (main)", (".attn.",)),
    ("cross-attention", (".cross_attn.",)),
    ("ffn", (".mlp.",)),
    ("block modulation", ("scale_shift_table",)),
)


def group_of(key: str) -> str:
    for name, needles in GROUPS:
        if any(n in key for n in needles):
            return name
    return "other"


def _table(shapes: dict[str, tuple]) -> list[str]:
    counts: dict[str, int] = defaultdict(int)
    for key, shape in shapes.items():
        n = 1
        for d in shape:
            n *= d
        counts[group_of(key)] += n
    total = sum(counts.values())
    lines = [f"  {name:<24}{n / 1e6:>12.2f} M" for name, n in sorted(counts.items(), key=lambda kv: -kv[1])]
    lines.append(f"  {'total':<24}{total / 1e6:>12.2f} M  ({total * 2 / 2**30:.2f} GiB in bf16, "
                 f"{total * 4 / 2**30:.2f} GiB in fp32)")
    return lines


def describe(target: str) -> str:
    import torch

    from runtime.config import load_config
    from runtime.model import build_model

    path = Path(target)
    if path.is_file() and path.suffix in (".safetensors", ".pt", ".pth"):
        from runtime.checkpoint import checkpoint_shapes

        shapes = checkpoint_shapes(path)
        dtypes = sorted({d for _, d in shapes.values()})
        depth = 1 + max((int(k.split(".")[1]) for k in shapes if k.startswith("blocks.")), default=-1)
        gdn = sorted({int(k.split(".")[1]) for k in shapes if k.endswith("attn.conv_k.weight")})
        lines = [f"checkpoint {path}", f"  tensors: {len(shapes)}, dtypes: {', '.join(dtypes)}",
                 (f"  blocks: {depth} ({len(gdn)} GDN, {depth - len(gdn)} softmax: "
                  f"{[i for i in range(depth) if i not in gdn]})")]
        return "\n".join(lines + _table({k: v[0] for k, v in shapes.items()}))
    cfg = load_config(target)
    model = build_model(cfg, device="meta", dtype=torch.bfloat16)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    lines = [(f"config {cfg.name}: {cfg.depth} blocks, hidden {cfg.hidden_size}, {cfg.num_heads} heads x "
              f"{cfg.head_dim}"),
             f"  softmax blocks {list(cfg.softmax_blocks)}, GDN blocks {list(cfg.gdn_blocks)}",
             (f"  video {cfg.height}x{cfg.width} @ {cfg.fps} fps; latent {cfg.in_channels} ch, "
              f"{cfg.latent_height}x{cfg.latent_width} = {cfg.tokens_per_frame} tokens/frame"),
             (f"  chunks: first {cfg.first_chunk_size} latent frames, then {cfg.chunk_size}; "
              f"{len(cfg.denoising_timesteps) - 1} denoising steps {list(cfg.denoising_timesteps)} + 1 cache pass"),
             "  parameters by group:"]
    lines += _table(shapes)
    try:
        from runtime.weights import component_status

        lines.append("  components:")
        for st in component_status(cfg):
            lines.append(f"    {st.component:<14}{'present' if st.present else 'missing':<9}{st.ref}  ({st.where})")
    except Exception as exc:  # noqa: BLE001 - the status is a courtesy; never fail `info` on it
        lines.append(f"  components: unknown ({exc})")
    return "\n".join(lines)
