"""Input embedders, adaLN-single and the final layer (spec section 1.4). Key names follow the checkpoints."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from runtime.norms import RMSNorm, layer_norm, modulate


class PatchEmbed3D(nn.Module):
    """Conv3d with a 1x1x1 kernel from latent channels to tokens ordered (t, h, w)."""

    def __init__(self, in_channels: int, hidden: int):
        super().__init__()
        self.proj = nn.Conv3d(in_channels, hidden, kernel_size=1, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        """x [B, Cin, T, h, w] -> tokens [B, T, h*w, C]."""
        w = self.proj.weight.flatten(1)
        y = torch.einsum("bcthw,oc->bthwo", x.to(w.dtype), w) + self.proj.bias
        return y.flatten(2, 3)


class TimestepEmbedder(nn.Module):
    """256-d sinusoid [cos, sin] of integer timesteps, then Linear-SiLU-Linear."""

    def __init__(self, hidden: int, freq_dim: int = 256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))

    def sinusoid(self, t: Tensor) -> Tensor:
        half = self.freq_dim // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        # The official model truncates timesteps to integers before embedding.
        args = t.long().float()[..., None] * freqs
        return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)

    def forward(self, t: Tensor) -> Tensor:
        """t [B, T] (0..1000) -> [B, T, C]."""
        w = self.mlp[0].weight
        return self.mlp(self.sinusoid(t).to(w.dtype))


class CaptionMlp(nn.Module):
    def __init__(self, in_dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(in_dim, hidden)
        self.fc2 = nn.Linear(hidden, hidden)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class CaptionEmbedder(nn.Module):
    """Projects text-encoder states to the model width; `y_embedding` is the (training-only) null caption."""

    def __init__(self, caption_channels: int, hidden: int, max_length: int):
        super().__init__()
        self.y_proj = CaptionMlp(caption_channels, hidden)
        self.register_buffer("y_embedding", torch.randn(max_length, caption_channels) / caption_channels**0.5)

    def forward(self, y: Tensor) -> Tensor:
        return self.y_proj(y.to(self.y_proj.fc1.weight.dtype))


class FinalLayer(nn.Module):
    """LayerNorm, per-frame shift/scale from the raw timestep embedding, Linear to latent channels."""

    def __init__(self, hidden: int, out_channels: int):
        super().__init__()
        self.linear = nn.Linear(hidden, out_channels)
        self.scale_shift_table = nn.Parameter(torch.randn(2, hidden) / hidden**0.5)

    def forward(self, x: Tensor, t_emb: Tensor) -> Tensor:
        """x [B, T, S, C], t_emb [B, T, C] -> [B, T, S, Cout]."""
        shift, scale = (self.scale_shift_table[None, None] + t_emb[:, :, None]).unbind(2)
        return self.linear(modulate(layer_norm(x), shift[:, :, None], scale[:, :, None]))


def text_norm(hidden: int, init: float) -> RMSNorm:
    return RMSNorm(hidden, eps=1e-5, init=init)
