"""The SANA-WM stage-1 diffusion transformer: config + embedders + blocks + final layer.

One forward serves the three modes:
- bidirectional: `chunks=None`, no cache: every frame sees every frame;
- chunk-causal: `chunks=((0, 4), (4, 7), ...)`, no cache: a chunk sees earlier chunks (softmax blocks through
  the sink + window mask) and never later ones;
- streaming: one chunk with a `StreamCache` holding the earlier chunks' state; `write_cache=True` is the clean
  pass that stores this chunk's state for the next.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from runtime.attention import FrameContext
from runtime.block import SanaWMBlock
from runtime.cache import StreamCache
from runtime.camera_torch import camera_conditions_to_ray_matrices
from runtime.config import ModelConfig, load_config
from runtime.cross_attention import text_mask_bias
from runtime.embedders import CaptionEmbedder, FinalLayer, PatchEmbed3D, TimestepEmbedder, text_norm
from runtime.ffn import store_depthwise_tap_major_, store_tap_major_
from runtime.rope import rope_tables


@dataclass
class TextContext:
    """A prompt prepared once per session: per-block cross-attention K/V and the padding bias (the fixed-length
    form, [B, H, L, D] and [B, 1, 1, L], that exported engines take), and what the PyTorch blocks attend with:
    for one prompt whose valid tokens are a prefix (the text encoder pads at the end), only those keys and no
    bias. The same result: a padded key's -10000 bias underflows to a weight of exactly 0 in the softmax; without
    a bias the attention kernel skips the mask, and a short prompt attends over its own length, not 300 tokens."""

    kv: list[tuple[Tensor, Tensor]]
    bias: Tensor
    attend_kv: list[tuple[Tensor, Tensor]] | None = None   # None: the full keys with the bias
    attend_bias: Tensor | None = None

    def __post_init__(self):
        if self.attend_kv is None:
            self.attend_kv, self.attend_bias = self.kv, self.bias

    @classmethod
    def build(cls, kv: list[tuple[Tensor, Tensor]], mask: Tensor) -> TextContext:
        bias = text_mask_bias(mask)
        valid = int(mask[0].bool().sum()) if mask.shape[0] == 1 else 0
        if valid and bool(mask[0, :valid].bool().all()):        # (one host sync per prompt)
            return cls(kv, bias, [(k[:, :, :valid], v[:, :, :valid]) for k, v in kv], None)
        return cls(kv, bias)


def chunk_ranges(num_frames: int, first: int, size: int) -> tuple[tuple[int, int], ...]:
    """Chunk-causal layout: a first chunk of `first` frames, then chunks of `size`; a final remainder
    shorter than `size` joins the previous chunk (spec 2.4)."""
    starts = [0] + list(range(first, num_frames, size))
    ranges = [(s, min(s + (first if i == 0 else size), num_frames)) for i, s in enumerate(starts) if s < num_frames]
    if len(ranges) > 1 and ranges[-1][1] - ranges[-1][0] < size:
        last = ranges.pop()
        ranges[-1] = (ranges[-1][0], last[1])
    return tuple(ranges)


def softmax_chunk_mask(chunks, tokens_per_frame: int, sink: bool, recent: int, device) -> Tensor:
    """Bool [N, N]: query chunk cq sees key chunk ck iff ck == cq, or ck < cq and (ck is the sink or
    cq - ck <= recent) -- exactly what the streaming sink + ring cache holds."""
    ids = torch.cat([torch.full(((e - s) * tokens_per_frame,), i, device=device) for i, (s, e) in enumerate(chunks)])
    cq, ck = ids[:, None], ids[None, :]
    past = (ck < cq) & ((cq - ck <= recent) | ((ck == 0) & sink))
    return (ck == cq) | past


class SanaWorldModel(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        C = cfg.hidden_size
        self.cfg = cfg
        self.x_embedder = PatchEmbed3D(cfg.in_channels, C)
        self.t_embedder = TimestepEmbedder(C)
        self.t_block = nn.Sequential(nn.SiLU(), nn.Linear(C, 6 * C))
        self.y_embedder = CaptionEmbedder(cfg.caption_channels, C, cfg.text_max_length)
        self.attention_y_norm = text_norm(C, cfg.y_norm_scale)
        # The absmap branch is skipped whenever chunk Plucker injection is on; kept for checkpoint layout.
        self.raymap_embedder = PatchEmbed3D(3, C)
        self.plucker_embedder = PatchEmbed3D(cfg.plucker_channels, C)
        for emb in (self.raymap_embedder, self.plucker_embedder):
            nn.init.zeros_(emb.proj.weight)
            nn.init.zeros_(emb.proj.bias)
        self.blocks = nn.ModuleList(SanaWMBlock(cfg, softmax=i in cfg.softmax_blocks) for i in range(cfg.depth))
        self.final_layer = FinalLayer(C, cfg.in_channels)

    # ------------------------------------------------------------------------------------------------
    def prepare_text(self, emb: Tensor, mask: Tensor) -> TextContext:
        """emb [B, L, caption_channels], mask [B, L] -> per-block text K/V (computed once per prompt)."""
        y = self.attention_y_norm(self.y_embedder(emb))
        return TextContext.build([blk.cross_attn.text_kv(y) for blk in self.blocks], mask)

    def new_cache(self, batch: int = 1) -> StreamCache:
        p = next(self.parameters())
        return StreamCache(self.cfg, batch, p.device, p.dtype)

    def forward(self, x: Tensor, timestep: Tensor, text: TextContext, camera: Tensor, plucker: Tensor, *,
                chunks: tuple[tuple[int, int], ...] | None = None, frame_offset: int | None = None,
                cache: StreamCache | None = None, write_cache: bool = False,
                positions: Tensor | None = None, plucker_terms: list[Tensor] | None = None,
                frame_tables: tuple | None = None) -> Tensor:
        """Predict the flow velocity v = noise - x0.

        Args:
            x: [B, Cin, T, h, w] latents of the frames of this call.
            timestep: [B, T] per-latent-frame timesteps in [0, 1000].
            text: a `TextContext` from `prepare_text`.
            camera: [B, T, 20] per-latent-frame c2w (16, row-major, relative to frame 0) + fx, fy, cx, cy in
                latent pixels.
            plucker: [B, plucker_channels, T, h, w] chunk Plucker maps.
            chunks: local (start, end) frame ranges; None = one chunk (bidirectional over the call).
            frame_offset: absolute latent index of the first frame (RoPE); defaults to the cache position.
            cache: streaming state of the earlier chunks (then the call must be one chunk).
            write_cache: store this chunk's state in `cache` (the clean pass at t = 0).
            positions: [T] absolute latent frame indices as a device tensor (instead of frame_offset), so that a
                captured CUDA graph reads the positions of each replay from a buffer.
            plucker_terms: `plucker_terms(plucker)` when the caller has it already (the passes of one chunk share
                it), else computed here.
            frame_tables: `frame_tables(...)` of these frames when the caller has them already (likewise), else
                computed here.
        Returns:
            [B, Cin, T, h, w] velocity.
        """
        cfg = self.cfg
        _, _, T, h, w = x.shape
        if (h, w) != (cfg.latent_height, cfg.latent_width):
            raise ValueError(f"latent grid {h}x{w} does not match the config's "
                             f"{cfg.latent_height}x{cfg.latent_width}")
        chunks = tuple(chunks) if chunks else ((0, T),)
        if cache is not None and len(chunks) != 1:
            raise ValueError("a streaming call (with a cache) covers exactly one chunk")
        if write_cache and cache is None:
            raise ValueError("write_cache needs a cache")
        if frame_tables is None:
            frame_tables = self.frame_tables(camera, T, frame_offset=frame_offset, cache=cache, positions=positions)
        rope, cam_rope, rays = frame_tables
        mask = None
        if len(chunks) > 1:
            recent = cfg.kv_cache_chunks - 1 if cfg.sink else cfg.kv_cache_chunks
            mask = softmax_chunk_mask(chunks, h * w, cfg.sink, recent, x.device)
        ctx = FrameContext(chunks, (h, w), rope, cam_rope, rays, mask, write_cache)
        caches = cache.blocks if cache is not None else [None] * len(self.blocks)
        v = self.forward_in_context(x, timestep, plucker, text.attend_kv, text.attend_bias, ctx, caches, plucker_terms)
        if write_cache:
            cache.commit_chunk(T)
        return v

    def frame_tables(self, camera: Tensor, T: int, *, frame_offset: int | None = None, cache: StreamCache | None = None,
                     positions: Tensor | None = None) -> tuple:
        """(RoPE cos / sin, camera RoPE cos / sin, UCPE ray matrices) of T frames at their absolute positions
        (`positions`, else from `frame_offset`, else the cache's position) under `camera` [B, T, 20]: the same for
        every pass of a chunk, so `denoise_chunk` builds them once (eager float64 work, ~40 small kernels)."""
        cfg = self.cfg
        h, w = cfg.latent_height, cfg.latent_width
        if positions is not None:
            frames = positions
        else:
            if frame_offset is None:
                frame_offset = cache.frames_done if cache is not None else 0
            frames = torch.arange(frame_offset, frame_offset + T, device=camera.device)
        return (rope_tables(cfg.rope_split, frames, h, w, cfg.rope_theta),
                rope_tables(cfg.rope_split, frames, h, w, cfg.rope_theta, camera=True),
                camera_conditions_to_ray_matrices(camera.float(), (h, w)))

    def plucker_terms(self, plucker: Tensor) -> list[Tensor]:
        """Each block's Plucker-ray term [B, T, S, C] (the embedded 48-channel ray maps through the block's
        `plucker_proj`, added after its attention): the same for every denoising pass of a chunk."""
        dtype = self.x_embedder.proj.weight.dtype
        plucker_emb = self.plucker_embedder(plucker.to(dtype))
        return [blk.plucker_proj(plucker_emb) for blk in self.blocks]

    def forward_in_context(self, x: Tensor, timestep: Tensor, plucker: Tensor, text_kv, text_bias, ctx,
                           caches, plucker_terms: list[Tensor] | None = None) -> Tensor:
        """The network once the frame context (RoPE, rays, mask) is built: embedders, every block with its
        cache (or None), final layer. Shared by `forward` and the ONNX export's pure-function step.

        text_kv: per block (K, V) of the text; caches: per block cache objects the blocks read and update in
        place; plucker_terms: `plucker_terms(plucker)` if already computed. Returns the velocity [B, Cin, T, h, w]."""
        B, _, T, h, w = x.shape
        dtype = self.x_embedder.proj.weight.dtype
        tokens = self.x_embedder(x.to(dtype))                                  # [B, T, S, C]
        t_emb = self.t_embedder(timestep)                                       # [B, T, C]
        t0 = self.t_block(t_emb).unflatten(-1, (6, self.cfg.hidden_size))      # [B, T, 6, C]
        if plucker_terms is None:
            plucker_terms = self.plucker_terms(plucker)
        for blk, kv, block_cache, ray_term in zip(self.blocks, text_kv, caches, plucker_terms, strict=True):
            tokens = blk(tokens, t0, ray_term, kv, text_bias, ctx, block_cache)
        out = self.final_layer(tokens, t_emb)                                  # [B, T, S, Cin]
        return out.permute(0, 3, 1, 2).reshape(B, self.cfg.in_channels, T, h, w)


# Compiled variants of the one `SanaWMBlock.forward` code object that all blocks share: {GDN, softmax} x {first
# chunk, later chunks} x {denoising pass, cache pass} x the softmax caches' filling states (empty, sink, full).
# That is more than dynamo's default limit of 8, past which it silently runs the remaining variants eagerly
# (until session 6 the softmax blocks' steady-state step ran uncompiled that way).
BLOCK_RECOMPILE_LIMIT = 64

# compile_blocks stacks each attention block's input projections into one GEMM; SANA_WM_STACK_INPUTS=0 keeps them
# separate (for measuring what the stacking gives).
STACK_INPUT_PROJECTIONS = os.environ.get("SANA_WM_STACK_INPUTS", "1") != "0"


def apply_inductor_options_(spec: str) -> None:
    """Set inductor options named in `spec`, e.g. "combo_kernels=1,max_fusion_size=128" (from SANA_WM_INDUCTOR:
    options without an environment variable of their own, to time on the GPU without editing code). Values are
    ints, with 0/1 for booleans; an unknown option is an error, not a silent no-op."""
    import torch._inductor.config as inductor_config

    for item in filter(None, (part.strip() for part in spec.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not hasattr(inductor_config, key):
            raise ValueError(f"SANA_WM_INDUCTOR: {item!r} is not option=value with a known inductor option")
        current = getattr(inductor_config, key)
        setattr(inductor_config, key, bool(int(value)) if isinstance(current, bool) else int(value))


def compile_blocks(model: SanaWorldModel, backend="inductor") -> SanaWorldModel:
    """torch.compile each block (fuses the many small elementwise ops of norms, RoPE, UCPE, gates and the
    temporal convs), after storing the FFN temporal and depthwise convs' weights tap by tap
    (`ffn.store_tap_major_`, `ffn.store_depthwise_tap_major_`; an FP8 temporal conv with a static input scale:
    `FP8TemporalConv.store_tap_weights_`), the camera q/k/v projections' weights as one
    matrix (`CameraAttention.fuse_camera_projections_`) and the projections of each attention block's input as
    one GEMM (`CameraAttention.stack_input_projections_`; FP8 input scales must be calibrated before). Shapes are
    static per chunk kind, so each block kind compiles a few times at most and a steady-state chunk compiles
    nothing (tests/unit/test_compile.py)."""
    import torch._dynamo.config as dynamo_config

    name = "recompile_limit" if hasattr(dynamo_config, "recompile_limit") else "cache_size_limit"  # older torch
    setattr(dynamo_config, name, max(getattr(dynamo_config, name), BLOCK_RECOMPILE_LIMIT))
    apply_inductor_options_(os.environ.get("SANA_WM_INDUCTOR", ""))
    for blk in model.blocks:
        if isinstance(blk.mlp.t_conv, nn.Conv2d):
            store_tap_major_(blk.mlp.t_conv)
        elif hasattr(blk.mlp.t_conv, "store_tap_weights_"):   # FP8 with a static input scale: a GEMM per tap
            blk.mlp.t_conv.store_tap_weights_()
        store_depthwise_tap_major_(blk.mlp.depth_conv.conv)
        blk.attn.fuse_camera_projections_()
        if STACK_INPUT_PROJECTIONS:
            blk.attn.stack_input_projections_()
        blk.forward = torch.compile(blk.forward, dynamic=False, backend=backend)
    return model


def randomize_(model: SanaWorldModel, seed: int = 0) -> SanaWorldModel:
    """Give every parameter a non-degenerate random value (zero-initialised branches included), so that
    every code path affects the output: for tests and speed benchmarks, never for generation."""
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)

    def randn(shape):
        return torch.randn(shape, generator=gen, device=device)

    with torch.no_grad():
        for name, p in model.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if leaf in ("A_log", "dt_bias"):
                val = randn(p.shape) * 0.5
            elif "norm" in name:
                val = 1.0 + 0.1 * randn(p.shape)
            elif leaf == "scale_shift_table":
                val = randn(p.shape) * 0.1
            elif p.dim() >= 2:
                val = randn(p.shape) / math.sqrt(p[0].numel())
            else:
                val = randn(p.shape) * 0.02
            p.copy_(val.to(p.dtype))
    return model


def build_model(config: str | ModelConfig, *, device: str | torch.device = "cpu",
                dtype: torch.dtype = torch.float32, init: str = "official", seed: int = 0) -> SanaWorldModel:
    """Build the model from a preset name, YAML path or config.

    init: "official" (the training inits: zero-initialised camera / Plucker / temporal branches) or
    "random" (every weight random; for tests and benchmarks). `device="meta"` allocates nothing.
    """
    cfg = load_config(config)
    if init not in ("official", "random"):
        raise ValueError(f"init must be 'official' or 'random', got {init!r}")
    device = torch.device(device)
    if device.type == "meta":
        with torch.device("meta"):
            return SanaWorldModel(cfg).to(dtype)
    torch.manual_seed(seed)
    with torch.device(device):   # allocate and initialise where the model runs (2.6B params on the GPU)
        model = SanaWorldModel(cfg)
    if init == "random":
        randomize_(model, seed)
    return model.to(dtype=dtype).eval()
