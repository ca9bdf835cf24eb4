"""The LTX-2 refiner model: diffusers' `LTX2VideoTransformer3DModel` + `LTX2TextConnectors`, a Gemma-3 text encoder,
and a video-only forward written here.

Why a forward of our own: diffusers' `forward` always runs the audio stream and takes a dense [S, S] mask at
best, while the refiner needs (a) queries of one group of frames attending to a *prefix* of keys/values computed
earlier (the clean sink frame, and in the autoregressive mode the recent refined frames), and (b) the per-layer
K/V of a pass captured for later passes. So `LTX2Refiner.forward` walks the transformer blocks itself, reusing
the diffusers submodules (norms, projections, feed-forward, cross-attention, RoPE tables), and computes the
self-attention here: SDPA of the active queries over [prefix K/V ‖ own K/V]. An optional dense boolean mask
(`token_mask`) turns the same function into a full-sequence masked reference, which the tests compare against.

Audio modules are never run, so they never leave the CPU (or the meta device when built for benchmarks).
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from runtime.weights import IncompatibleWeightsError

log = logging.getLogger(__name__)

OFFLOAD_MODES = ("none", "model", "blocks")
PRECISIONS = ("bf16", "fp8")


def ltx2_transformer_config() -> dict:
    """Full LTX-2 (19B audio-video) transformer config of the refiner checkpoint; only the video half runs here.

    Values from the released `refiner/transformer/config.json` (48 layers, 32 x 128 heads, cross-attention 4096,
    Gemma-3 captions 3840, split RoPE); everything else is diffusers' default for LTX-2.0.
    """
    return {"in_channels": 128, "out_channels": 128, "patch_size": 1, "patch_size_t": 1,
            "num_attention_heads": 32, "attention_head_dim": 128, "cross_attention_dim": 4096,
            "num_layers": 48, "caption_channels": 3840, "qk_norm": "rms_norm_across_heads",
            "rope_type": "split", "rope_double_precision": True, "vae_scale_factors": (8, 32, 32),
            "audio_in_channels": 128, "audio_out_channels": 128, "audio_cross_attention_dim": 2048}


@dataclass
class LayerKV:
    """Keys (already rotated, unless stated) and values of some tokens in one layer: [B, S, inner_dim] each."""

    k: torch.Tensor
    v: torch.Tensor

    @property
    def tokens(self) -> int:
        return int(self.k.shape[1])


@dataclass
class RefinerText:
    """A prompt ready for cross-attention: projected caption tokens [B, L, inner] and an additive mask [B, 1, L]."""

    hidden: torch.Tensor
    mask_bias: torch.Tensor | None


class LTX2Refiner:
    """The LTX-2 video transformer and its text path, placed on a device with an offload policy.

    Attributes:
        transformer: the diffusers model (eval, no grad); audio modules stay on the CPU / meta device.
        connectors: `LTX2TextConnectors` (None when prompts come as precomputed connector embeddings).
        text_encoder_dir: folder of the Gemma-3 model and tokenizer (None: no text encoder).
        device, dtype: where and in which precision the video modules run.
        offload: "none" (all video modules on `device`), "model" (each component is moved to the device only
            while it runs), "blocks" (transformer blocks stay in CPU memory and are streamed to the device one
            at a time, the next one prefetched while the current one runs).
    """

    def __init__(self, transformer, connectors=None, *, text_encoder_dir: str | Path | None = None,
                 device="cpu", dtype: torch.dtype = torch.float32, offload: str = "none",
                 text_max_length: int = 1024) -> None:
        cfg = transformer.config
        if getattr(cfg, "cross_attn_mod", False) or not getattr(cfg, "use_prompt_embeddings", True):
            raise IncompatibleWeightsError("refiner: LTX-2.3-style transformers (cross_attn_mod / no caption "
                                           "projection) are not supported; the SANA-WM refiner is LTX-2.0")
        if offload not in OFFLOAD_MODES:
            raise ValueError(f"refiner offload must be one of {OFFLOAD_MODES}, got {offload!r}")
        self.transformer = transformer.eval().requires_grad_(False)
        self.connectors = None if connectors is None else connectors.eval().requires_grad_(False)
        self.text_encoder_dir = None if text_encoder_dir is None else Path(text_encoder_dir)
        self.device = torch.device(device)
        self.dtype = dtype
        self.offload = offload
        self.text_max_length = int(text_max_length)
        self._on_device = False
        self._streamer: _BlockStreamer | None = None
        self._prompt_cache: dict[str, RefinerText] = {}
        if offload == "none":
            self.to_device()

    # Loading ---------------------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, folders: dict[str, Path], *, device="cpu", dtype: torch.dtype | None = None,
                        offload: str = "none", precision: str = "bf16") -> LTX2Refiner:
        """Load from resolved folders {'transformer', 'connectors', 'text_encoder'} (see
        `runtime.weights.resolve_refiner_weights`); weights are read into CPU memory, video modules then placed
        according to `offload`."""
        from diffusers import LTX2VideoTransformer3DModel
        from diffusers.pipelines.ltx2 import LTX2TextConnectors

        device = torch.device(device)
        if dtype is None:
            dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        for name in ("transformer", "connectors"):
            if not (Path(folders[name]) / "config.json").is_file():
                raise IncompatibleWeightsError(f"refiner {name}: {folders[name]} has no config.json "
                                               "(expected a diffusers folder)")
        if precision not in PRECISIONS:
            raise ValueError(f"refiner precision must be one of {PRECISIONS}, got {precision!r}")
        transformer = LTX2VideoTransformer3DModel.from_pretrained(str(folders["transformer"]), torch_dtype=dtype)
        connectors = LTX2TextConnectors.from_pretrained(str(folders["connectors"]), torch_dtype=dtype)
        refiner = cls(transformer, connectors, text_encoder_dir=folders.get("text_encoder"), device=device,
                      dtype=dtype, offload=offload)
        if precision == "fp8":
            # After placement: with offload "none" the weights are quantized on the device (fast); with the
            # other modes before the first move, so the CPU copies are the FP8 ones.
            swap_fp8_linears(refiner.transformer)
        return refiner

    # Placement -------------------------------------------------------------------------------------------------
    def to_device(self) -> None:
        """Put the video modules where `offload` says they run (a no-op when already there)."""
        if self._on_device:
            return
        streamed = self.offload == "blocks"
        for module, name, tensor in video_tensors(self.transformer, blocks=not streamed):
            _set_tensor(module, name, tensor.to(self.device))
        if streamed:
            self._streamer = _BlockStreamer(self.transformer.transformer_blocks, self.device)
        self._on_device = True

    def release(self) -> None:
        """With offload "model": move the transformer back to the CPU (frees its device memory)."""
        if self.offload != "model" or not self._on_device:
            return
        for module, name, tensor in video_tensors(self.transformer):
            _set_tensor(module, name, tensor.to("cpu"))
        self._on_device = False
        _empty_cache(self.device)

    # Text -------------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_prompt(self, prompt: str) -> RefinerText:
        """Gemma-3 (left padding, `text_max_length` tokens, every hidden state stacked) -> connectors -> caption
        projection (spec 6.5). The text encoder is loaded for the call and freed afterwards (it is the largest
        component and runs once per prompt); results are cached per prompt."""
        if prompt in self._prompt_cache:
            return self._prompt_cache[prompt]
        if self.text_encoder_dir is None or self.connectors is None:
            raise RuntimeError("this refiner has no text encoder / connectors: pass connector embeddings to "
                               "`prepare_text` instead")
        tokenizer, backbone = load_gemma3(self.text_encoder_dir, dtype=self.dtype)
        backbone.to(self.device)
        tokens = tokenizer([prompt.strip()], padding="max_length", max_length=self.text_max_length,
                           truncation=True, add_special_tokens=True, return_tensors="pt")
        ids, mask = tokens.input_ids.to(self.device), tokens.attention_mask.to(self.device)
        states = backbone(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
        stacked = torch.stack(states, dim=-1)            # [B, L, C, layers + 1]: the connectors normalise it
        del backbone, states
        _empty_cache(self.device)
        self.connectors.to(self.device)
        video_emb, _, emb_mask = self.connectors(stacked.to(self.dtype), mask, padding_side="left")
        if self.offload != "none":
            self.connectors.to("cpu")
        text = self.prepare_text(video_emb, emb_mask)
        self._prompt_cache[prompt] = text
        return text

    @torch.no_grad()
    def prepare_text(self, embeds: torch.Tensor, mask: torch.Tensor | None = None) -> RefinerText:
        """Connector embeddings [B, L, caption_channels] (+ binary mask [B, L]) -> projected caption tokens."""
        self.to_device()
        proj = self.transformer.caption_projection
        hidden = proj(embeds.to(self.device, self.dtype))
        bias = None
        if mask is not None:  # the additive form diffusers' forward builds from a binary mask
            bias = ((1.0 - mask.to(self.device, self.dtype)) * -10000.0).unsqueeze(1)
        return RefinerText(hidden, bias)

    # Forward -----------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def forward(self, latents: torch.Tensor, sigma, text: RefinerText, rope, *,
                prefix: list[LayerKV] | None = None, capture: str | None = None, velocity: bool = True,
                token_mask: torch.Tensor | None = None) -> tuple[torch.Tensor | None, list[LayerKV] | None]:
        """Video-only pass over the active tokens.

        Args:
            latents: active tokens [B, S, C] (patchified latents; for patch size 1 = frames x h x w).
            sigma: noise level of the active tokens: a float (all tokens) or a tensor [S] (per token).
            text: the prompt (`encode_prompt` / `prepare_text`).
            rope: (cos, sin) of the active tokens' positions (`video_rope`).
            prefix: per layer, rotated K/V the active queries attend to before their own (None: none).
            capture: "pre" (keys before RoPE) or "post" (rotated keys): return each layer's K/V of the active
                tokens.
            velocity: False skips what only the output needs (the last layer after its K/V, the output head).
            token_mask: dense boolean [S, prefix + S] (True = attend), for reference computations only.

        Returns:
            (velocity [B, S, C_out] float32 or None, captured per-layer K/V or None).
        """
        tr = self.transformer
        self.to_device()
        b = latents.shape[0]
        x = latents.to(self.device, self.dtype)
        scale = float(tr.config.timestep_scale_multiplier)
        if torch.is_tensor(sigma):
            t = (sigma.to(self.device, torch.float32) * scale).repeat(b)            # per token: [B * S]
        else:
            t = torch.full((b,), float(sigma) * scale, device=self.device)         # one value per sample
        h = tr.proj_in(x)
        temb, emb_out = tr.time_embed(t, batch_size=b, hidden_dtype=h.dtype)
        temb = temb.view(b, -1, temb.shape[-1])                                     # [B, 1 or S, 6 D]
        emb_out = emb_out.view(b, -1, emb_out.shape[-1])
        captured: list[LayerKV] | None = [] if capture else None
        blocks = tr.transformer_blocks
        last = len(blocks) - 1
        for i, block in enumerate(blocks):
            if self._streamer is not None:
                self._streamer.enter(i)
            kv_only = capture is not None and not velocity and i == last
            h = _block(block, h, temb, text, rope, None if prefix is None else prefix[i], capture, captured,
                       token_mask, kv_only)
            if self._streamer is not None:
                self._streamer.leave(i)
        if not velocity:
            return None, captured
        mod = tr.scale_shift_table[None, None].to(emb_out.dtype) + emb_out[:, :, None]
        shift, scale_out = mod[:, :, 0], mod[:, :, 1]
        out = tr.proj_out(tr.norm_out(h) * (1 + scale_out) + shift)
        return out.float(), captured

    # Geometry -----------------------------------------------------------------------------------------------------
    def rope(self, first_frame: int, num_frames: int, height: int, width: int, fps: float, batch: int = 1):
        """RoPE (cos, sin) of latent frames [first_frame, first_frame + num_frames) x height x width."""
        return video_rope(self.transformer, first_frame, num_frames, height, width, fps, batch=batch,
                          device=self.device)

    def rotate(self, layer: int, keys: torch.Tensor, rope) -> torch.Tensor:
        """Apply RoPE to keys [B, S, inner] captured before it (re-placing the sink at a new position)."""
        return _apply_rope(self.transformer.transformer_blocks[layer].attn1, keys, rope)

    @property
    def num_layers(self) -> int:
        return len(self.transformer.transformer_blocks)


# Block ------------------------------------------------------------------------------------------------------------
def _block(block, h, temb, text: RefinerText, rope, prefix: LayerKV | None, capture, captured, token_mask,
           kv_only: bool):
    """One `LTX2VideoTransformerBlock`, video half only (the same arithmetic as its forward)."""
    b = h.shape[0]
    n_mod = block.scale_shift_table.shape[0]
    mod = block.scale_shift_table[None, None].to(temb.dtype) + temb.reshape(b, temb.shape[1], n_mod, -1)
    shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mod.unbind(dim=2)[:6]
    x = block.norm1(h) * (1 + scale_msa) + shift_msa
    attn_out = _self_attention(block.attn1, x, rope, prefix, capture, captured, token_mask, kv_only)
    if kv_only:
        return h
    h = h + attn_out * gate_msa
    h = h + block.attn2(block.norm2(h), encoder_hidden_states=text.hidden, query_rotary_emb=None,
                        attention_mask=text.mask_bias)
    return h + block.ff(block.norm3(h) * (1 + scale_mlp) + shift_mlp) * gate_mlp


def _self_attention(attn, x, rope, prefix: LayerKV | None, capture, captured, token_mask, kv_only: bool):
    """Queries of the active tokens over [prefix K/V ‖ active K/V]; optionally records the active K/V."""
    q = attn.norm_q(attn.to_q(x))
    k = attn.norm_k(attn.to_k(x))
    v = attn.to_v(x)
    if capture == "pre":
        captured.append(LayerKV(k, v))
    k = _apply_rope(attn, k, rope)
    if capture == "post":
        captured.append(LayerKV(k, v))
    if kv_only:
        return None
    q = _apply_rope(attn, q, rope)
    if prefix is not None and prefix.tokens:
        k = torch.cat([prefix.k.to(k.dtype), k], dim=1)
        v = torch.cat([prefix.v.to(v.dtype), v], dim=1)
    b, s, _ = q.shape
    heads = attn.heads

    def split(t):  # [B, S, H * D] -> [B, H, S, D]
        return t.view(b, t.shape[1], heads, -1).transpose(1, 2)

    out = F.scaled_dot_product_attention(split(q), split(k), split(v), attn_mask=token_mask)
    out = out.transpose(1, 2).reshape(b, s, -1)
    if attn.to_gate_logits is not None:  # gated attention (off in LTX-2.0, kept for completeness)
        gates = 2.0 * torch.sigmoid(attn.to_gate_logits(x))
        out = (out.view(b, s, heads, -1) * gates.unsqueeze(-1)).flatten(2)
    return attn.to_out[1](attn.to_out[0](out))


def _apply_rope(attn, t: torch.Tensor, rope) -> torch.Tensor:
    from diffusers.models.transformers.transformer_ltx2 import (
        apply_interleaved_rotary_emb,
        apply_split_rotary_emb,
    )

    if attn.rope_type == "interleaved":
        return apply_interleaved_rotary_emb(t, rope)
    return apply_split_rotary_emb(t, rope)


def video_rope(transformer, first_frame: int, num_frames: int, height: int, width: int, fps: float, *,
               batch: int = 1, device=None):
    """RoPE tables for latent frames at absolute indices [first_frame, first_frame + num_frames).

    The coordinates follow LTX-2's convention: each patch is the box [start, end) in pixel units of the video
    (latent index x VAE stride); the time axis is shifted by the causal offset (latent frame 0 holds a single
    pixel frame), clamped at 0 and divided by fps. diffusers' `prepare_video_coords` only builds frames
    0..T-1; the autoregressive refiner needs frames at their absolute index in the clip.
    """
    rope = transformer.rope
    device = torch.device(device) if device is not None else torch.device("cpu")
    st, sh, sw = (float(s) for s in rope.scale_factors)
    pt, ps = int(rope.patch_size_t), int(rope.patch_size)
    f = torch.arange(first_frame, first_frame + num_frames, pt, device=device, dtype=torch.float32)
    y = torch.arange(0, height, ps, device=device, dtype=torch.float32)
    x = torch.arange(0, width, ps, device=device, dtype=torch.float32)
    offset = float(rope.causal_offset)
    t_box = torch.stack([f * st, (f + pt) * st], dim=-1)
    t_box = (t_box + offset - st).clamp(min=0) / fps
    y_box = torch.stack([y * sh, (y + ps) * sh], dim=-1)
    x_box = torch.stack([x * sw, (x + ps) * sw], dim=-1)
    nf, ny, nx = len(f), len(y), len(x)
    coords = torch.stack([t_box[:, None, None].expand(nf, ny, nx, 2),
                          y_box[None, :, None].expand(nf, ny, nx, 2),
                          x_box[None, None, :].expand(nf, ny, nx, 2)], dim=0)     # [3, F, H, W, 2]
    coords = coords.flatten(1, 3).unsqueeze(0).expand(batch, -1, -1, -1)         # [B, 3, N, 2]
    return rope(coords, device=device)


# Placement helpers ----------------------------------------------------------------------------------------------
_VIDEO_TOP = ("proj_in", "time_embed", "caption_projection", "norm_out", "proj_out")
_VIDEO_BLOCK = ("norm1", "attn1", "norm2", "attn2", "norm3", "ff")


def video_tensors(transformer, *, blocks: bool = True):
    """(module, name, tensor) of every parameter / buffer the video-only forward reads."""
    out = []

    def add(module):
        for sub in module.modules():
            for name, t in list(sub._parameters.items()) + list(sub._buffers.items()):
                if t is not None:
                    out.append((sub, name, t))

    for name in _VIDEO_TOP:
        add(getattr(transformer, name))
    out.append((transformer, "scale_shift_table", transformer.scale_shift_table))
    if blocks:
        for block in transformer.transformer_blocks:
            out.extend(_block_tensors(block))
    return out


def _block_tensors(block):
    out = [(block, "scale_shift_table", block.scale_shift_table)]
    for name in _VIDEO_BLOCK:
        for sub in getattr(block, name).modules():
            for pname, t in list(sub._parameters.items()) + list(sub._buffers.items()):
                if t is not None:
                    out.append((sub, pname, t))
    return out


def _set_tensor(module: nn.Module, name: str, value: torch.Tensor) -> None:
    if name in module._parameters:
        module._parameters[name] = nn.Parameter(value, requires_grad=False)
    else:
        module._buffers[name] = value


def _empty_cache(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


class _BlockStreamer:
    """Offload "blocks": every block's weights live in (pinned) CPU memory; `enter(i)` makes block i resident on
    the device and starts copying block i + 1 on a side stream, `leave(i)` drops block i's device copy.

    Device memory for weights is then two blocks (~1.1 GB in bf16 for LTX-2) instead of 48; the copies overlap
    the compute of the previous block (PCIe: ~0.55 GB per block, so compute-bound at 720p).
    """

    def __init__(self, blocks, device: torch.device) -> None:
        self.blocks = blocks
        self.device = device
        self.cuda = device.type == "cuda"
        self.host = []
        for block in blocks:
            tensors = []
            for module, name, t in _block_tensors(block):
                cpu = t.detach().to("cpu")
                if self.cuda:
                    cpu = cpu.pin_memory()
                _set_tensor(module, name, cpu)
                tensors.append((module, name, cpu))
            self.host.append(tensors)
        self.copy_stream = torch.cuda.Stream(device) if self.cuda else None
        self.ready: dict[int, object] = {}

    def _fetch(self, i: int) -> None:
        if i >= len(self.blocks) or i in self.ready:
            return
        if not self.cuda:          # nothing to move on the CPU; keeps the code path testable there
            self.ready[i] = None
            return
        self.copy_stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self.copy_stream):
            for module, name, cpu in self.host[i]:
                _set_tensor(module, name, cpu.to(self.device, non_blocking=True))
            event = torch.cuda.Event()
            event.record(self.copy_stream)
        self.ready[i] = event

    def enter(self, i: int) -> None:
        self._fetch(i)
        event = self.ready.pop(i)
        if event is not None:
            torch.cuda.current_stream(self.device).wait_event(event)
            for module, name, _ in self.host[i]:   # copied on the side stream, used on this one
                getattr(module, name).record_stream(torch.cuda.current_stream(self.device))
        self._fetch(i + 1)

    def leave(self, i: int) -> None:
        for module, name, cpu in self.host[i]:
            _set_tensor(module, name, cpu)


# Precision ------------------------------------------------------------------------------------------------------
def swap_fp8_linears(transformer) -> int:
    """Replace the nn.Linear layers of the video blocks (self-/cross-attention, feed-forward) by FP8 E4M3 linears
    with a per-tensor weight scale (`quant.linear.FP8Linear`: torch._scaled_mm on sm_89+, activations quantized
    per tensor on the fly). The embedders, output head and audio modules stay in high precision, as the official
    refiner's quantization skips them. Returns the number of layers swapped."""
    from quant.linear import FP8Linear

    count = 0
    for block in transformer.transformer_blocks:
        for part in ("attn1", "attn2", "ff"):
            parent_module = getattr(block, part)
            for name, module in list(parent_module.named_modules()):
                if type(module) is not nn.Linear:
                    continue
                owner = parent_module.get_submodule(name.rpartition(".")[0]) if "." in name else parent_module
                fp8 = FP8Linear.from_float(module, name=name)
                fp8.backend = "auto"
                setattr(owner, name.rpartition(".")[2], fp8)
                count += 1
    return count


# Text encoder -------------------------------------------------------------------------------------------------------
def load_gemma3(folder: str | Path, *, dtype: torch.dtype):
    """(tokenizer with left padding, Gemma-3 decoder returning hidden states) from a local folder.

    The released refiner ships `Gemma3ForConditionalGeneration` (model_type "gemma3"); a text-only Gemma-3
    ("gemma3_text") is accepted too. The tokenizer is read from the same folder or a sibling `tokenizer/`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, Gemma3ForConditionalGeneration

    folder = Path(folder)
    tok_dir = folder
    has_tokenizer = any((folder / f).is_file() for f in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json"))
    if not has_tokenizer and (folder.parent / "tokenizer").is_dir():
        tok_dir = folder.parent / "tokenizer"
    tokenizer = AutoTokenizer.from_pretrained(str(tok_dir), local_files_only=True)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    try:
        model_type = json.loads((folder / "config.json").read_text()).get("model_type", "")
    except (OSError, json.JSONDecodeError) as exc:
        raise IncompatibleWeightsError(f"refiner text encoder: unreadable {folder / 'config.json'}: {exc}") from None
    cls = Gemma3ForConditionalGeneration if model_type == "gemma3" else AutoModelForCausalLM
    model = cls.from_pretrained(str(folder), dtype=dtype, local_files_only=True).eval().requires_grad_(False)
    return tokenizer, model.model


# Benchmark construction ---------------------------------------------------------------------------------------------
def build_random_video_transformer(config: dict, *, device, dtype: torch.dtype, seed: int = 0):
    """An `LTX2VideoTransformer3DModel` built on the meta device with only its video modules materialised on
    `device` with random weights (the audio half, never run, allocates nothing): for speed and memory figures of
    the full 19B config on one GPU."""
    from diffusers import LTX2VideoTransformer3DModel

    with torch.device("meta"):
        model = LTX2VideoTransformer3DModel(**config)
    gen = torch.Generator(device=device).manual_seed(seed)
    for module, name, t in video_tensors(model):
        value = torch.empty(t.shape, device=device, dtype=dtype)
        if name == "scale_shift_table":
            value.normal_(0.0, t.shape[-1] ** -0.5, generator=gen)
        elif t.ndim >= 2:
            value.normal_(0.0, 0.02, generator=gen)
        elif "norm" in type(module).__name__.lower() and name == "weight":
            value.fill_(1.0)
        else:
            value.zero_()
        _set_tensor(module, name, value)
    return model.eval().requires_grad_(False)
