"""Text encoders: prompt strings -> caption embeddings [B, L, caption_channels] + mask [B, L].

Two implementations behind one interface with a per-prompt embedding cache (a repeated prompt costs a dict
lookup, `cache_hits` / `forward_prompts` count it):

- `Gemma2TextEncoder`: the official stage-1 recipe (spec 6.1) on a Gemma-2 decoder (`gemma-2-2b-it`).
  Prompt = "\n".join(chi_prompt) + user prompt, tokenized with right padding to
  len(tok.encode(chi_prompt)) + L - 2 tokens (padding="max_length", truncation); the decoder's last hidden
  state is kept at index 0 (BOS) and the last L - 1 positions => L tokens + mask (L = 300). A negative prompt
  is encoded without the chi prefix, straight at length L.
- `TinyTextEncoder` ("tiny-hash"): no weights. UTF-8 bytes index a fixed seeded random table
  [256, caption_channels], plus sinusoidal positions; a seeded BOS vector sits at index 0; truncated / padded
  to L with a mask. Deterministic on every machine (CPU generator).
"""
from __future__ import annotations

import abc
import math
from collections import OrderedDict
from pathlib import Path

import torch

from runtime.weights import IncompatibleWeightsError, MissingWeightsError, component_ref, resolve_weights

# The complex human instruction ("chi_prompt") of SANA-WM's stage-1 configs, verbatim:
# NVlabs/Sana configs/sana_wm/sana_wm_1600m_720p.yaml@24dd596 (text_encoder.chi_prompt); the streaming config
# (configs/sana_wm/sana_wm_streaming_1600m_720p.yaml, fork seermer/Sana-WM-Autoresearch@1a3cc16) has the same
# eight lines. It differs from Sana's T2I list (no "Do not add detail ..." line).
SANA_WM_CHI_PROMPT: tuple[str, ...] = (
    ('Given a user prompt, generate an "Enhanced prompt" that provides detailed visual descriptions suitable for '
     'image generation. Evaluate the level of detail in the user prompt:'),
    ('- If the prompt is simple, focus on adding specifics about colors, shapes, sizes, textures, and spatial '
     'relationships to create vivid and concrete scenes.'),
    ('- If the prompt is already detailed, refine and enhance the existing details slightly without '
     'overcomplicating.'),
    'Here are examples of how to transform or refine prompts:',
    ('- User Prompt: A cat sleeping -> Enhanced: A small, fluffy white cat curled up in a round shape, sleeping '
     'peacefully on a warm sunny windowsill, surrounded by pots of blooming red flowers.'),
    ('- User Prompt: A busy city street -> Enhanced: A bustling city street scene at dusk, featuring glowing '
     'street lamps, a diverse crowd of people in colorful clothing, and a double-decker bus passing by towering '
     'glass skyscrapers.'),
    ('Please generate only the enhanced description for the prompt below and avoid including any additional '
     'commentary or evaluations:'),
    'User Prompt: ',
)


class TextEncoder(abc.ABC):
    """Prompts -> (embeddings [B, L, caption_channels], mask [B, L]) with an LRU cache keyed by prompt.

    Attributes:
        caption_channels: C of the embeddings.
        max_length: L, tokens per prompt.
        cache_hits: prompts answered from the cache.
        forward_prompts: prompts that went through the encoder (cache misses).
    """

    def __init__(self, *, caption_channels: int, max_length: int, device="cpu", dtype=torch.float32,
                 cache_size: int = 32) -> None:
        if caption_channels <= 0 or max_length <= 0:
            raise ValueError(f"caption_channels and max_length must be positive, got {caption_channels}, {max_length}")
        self.caption_channels = int(caption_channels)
        self.max_length = int(max_length)
        self.device = torch.device(device)
        self.dtype = dtype
        self.cache_size = int(cache_size)
        self._cache: OrderedDict[tuple[bool, str], tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self.cache_hits = 0
        self.forward_prompts = 0

    @torch.no_grad()
    def encode(self, prompts: list[str] | str, *, negative: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode prompts.

        Args:
            prompts: a list of B prompts (a single string is taken as a list of one).
            negative: encode as negative / unconditional prompts (no instruction prefix for Gemma).

        Returns:
            embeddings [B, L, caption_channels] (self.dtype, self.device) and mask [B, L] (int64, 1 = token).
        """
        if isinstance(prompts, str):
            prompts = [prompts]
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise ValueError("encode: expected a non-empty list of strings")
        keys = [(bool(negative), p) for p in prompts]
        todo = list(dict.fromkeys(k for k in keys if k not in self._cache))
        if todo:
            emb, mask = self._encode_uncached([p for _, p in todo], negative=negative)
            self._check_shapes(emb, mask, len(todo))
            self.forward_prompts += len(todo)
            for i, key in enumerate(todo):
                self._cache[key] = (emb[i].to(self.device, self.dtype), mask[i].to(self.device, torch.long))
        self.cache_hits += len(keys) - len(todo)
        for key in keys:
            self._cache.move_to_end(key)
        out = [self._cache[k] for k in keys]
        while len(self._cache) > max(self.cache_size, len(set(keys))):
            self._cache.popitem(last=False)
        return torch.stack([e for e, _ in out]), torch.stack([m for _, m in out])

    def clear_cache(self) -> None:
        self._cache.clear()

    def _check_shapes(self, emb: torch.Tensor, mask: torch.Tensor, batch: int) -> None:
        want = (batch, self.max_length, self.caption_channels)
        if tuple(emb.shape) != want or tuple(mask.shape) != want[:2]:
            raise RuntimeError(f"{type(self).__name__}: produced {tuple(emb.shape)} / {tuple(mask.shape)}, "
                               f"expected {want} / {want[:2]}")

    @abc.abstractmethod
    def _encode_uncached(self, prompts: list[str], *, negative: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the encoder: B prompts -> [B, L, C], [B, L]."""


class TinyTextEncoder(TextEncoder):
    """Weight-free deterministic encoder for the tiny-world config: bytes -> seeded table + positions."""

    def __init__(self, *, caption_channels: int, max_length: int, device="cpu", dtype=torch.float32,
                 seed: int = 0, cache_size: int = 32) -> None:
        super().__init__(caption_channels=caption_channels, max_length=max_length, device=device, dtype=dtype,
                         cache_size=cache_size)
        gen = torch.Generator(device="cpu").manual_seed(seed)
        self.table = torch.randn(256, caption_channels, generator=gen)
        """[256, C] embedding of each byte value."""
        self.bos = torch.randn(caption_channels, generator=gen)
        """[C] embedding of the BOS token at index 0."""
        self.positions = sinusoidal_positions(max_length, caption_channels)
        """[L, C] added to every token."""

    def _encode_uncached(self, prompts: list[str], *, negative: bool) -> tuple[torch.Tensor, torch.Tensor]:
        L, C = self.max_length, self.caption_channels
        emb = torch.zeros(len(prompts), L, C)
        mask = torch.zeros(len(prompts), L, dtype=torch.long)
        for i, prompt in enumerate(prompts):
            ids = torch.tensor(list(prompt.encode("utf-8"))[: L - 1], dtype=torch.long)
            n = 1 + len(ids)
            emb[i, 0] = self.bos
            emb[i, 1:n] = self.table[ids]
            emb[i, :n] += self.positions[:n]
            mask[i, :n] = 1
        return emb, mask


def sinusoidal_positions(length: int, channels: int) -> torch.Tensor:
    """[length, channels] sin / cos position table (sin in the first half, cos in the second)."""
    half = channels // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float64) / max(half, 1))
    angles = torch.arange(length, dtype=torch.float64)[:, None] * freqs[None]
    table = torch.zeros(length, channels, dtype=torch.float64)
    table[:, :half] = torch.sin(angles)
    table[:, half: 2 * half] = torch.cos(angles)
    return table.float()


class Gemma2TextEncoder(TextEncoder):
    """Gemma-2 decoder with SANA-WM's stage-1 prompt recipe (see the module docstring).

    Attributes:
        model: the transformers decoder (`AutoModelForCausalLM(...).get_decoder()`), eval, no grad.
        tokenizer: its tokenizer, padding on the right.
        chi_prompt: the instruction lines prefixed to positive prompts.
    """

    def __init__(self, model, tokenizer, *, caption_channels: int, max_length: int = 300,
                 chi_prompt: tuple[str, ...] = SANA_WM_CHI_PROMPT, device="cpu", dtype=torch.float32,
                 cache_size: int = 32) -> None:
        super().__init__(caption_channels=caption_channels, max_length=max_length, device=device, dtype=dtype,
                         cache_size=cache_size)
        hidden = int(model.config.hidden_size)
        if hidden != caption_channels:
            raise IncompatibleWeightsError(f"text encoder width {hidden} != caption_channels {caption_channels}")
        self.model = model.to(device=self.device, dtype=dtype).eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.tokenizer.padding_side = "right"
        self.chi_prompt = tuple(chi_prompt)
        self._chi_text = "\n".join(self.chi_prompt)
        self._chi_tokens = len(tokenizer.encode(self._chi_text)) if self._chi_text else 0

    @classmethod
    def from_pretrained(cls, folder: str | Path, *, caption_channels: int, max_length: int = 300, device="cpu",
                        dtype=torch.float32, **kwargs) -> Gemma2TextEncoder:
        """Load a transformers folder (config.json, weights, tokenizer files) without network access."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        folder = Path(folder)
        if not (folder / "config.json").is_file():
            raise MissingWeightsError("text encoder", str(folder), folder / "config.json", "no config.json")
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        except (OSError, ValueError) as exc:
            raise IncompatibleWeightsError(f"{folder}: cannot load the tokenizer: {exc}") from None
        try:
            lm = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype, local_files_only=True)
        except OSError as exc:
            raise MissingWeightsError("text encoder", str(folder), folder, f"cannot load the model: {exc}") from None
        return cls(lm.get_decoder(), tokenizer, caption_channels=caption_channels, max_length=max_length,
                   device=device, dtype=dtype, **kwargs)

    def token_ids(self, prompts: list[str], *, negative: bool = False) -> tuple[torch.Tensor, torch.Tensor, list | None]:
        """Tokenize as the recipe does: (input_ids [B, L_all], attention_mask [B, L_all], kept positions or None)."""
        L = self.max_length
        if negative or not self._chi_text:
            texts, total, keep = list(prompts), L, None
        else:
            texts = [self._chi_text + p for p in prompts]
            total = self._chi_tokens + L - 2
            keep = [0] + list(range(total - L + 1, total))
        enc = self.tokenizer(texts, padding="max_length", max_length=total, truncation=True,
                             add_special_tokens=True, return_tensors="pt")
        return enc["input_ids"], enc["attention_mask"], keep

    def _encode_uncached(self, prompts: list[str], *, negative: bool) -> tuple[torch.Tensor, torch.Tensor]:
        ids, mask, keep = self.token_ids(prompts, negative=negative)
        ids, mask = ids.to(self.device), mask.to(self.device)
        hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
        if keep is not None:
            index = torch.tensor(keep, device=self.device)
            hidden, mask = hidden.index_select(1, index), mask.index_select(1, index)
        return hidden, mask


def load_text_encoder(name_or_path: str | Path, *, caption_channels: int, max_length: int, device="cpu",
                      dtype=torch.float32, allow_download: bool | None = None) -> TextEncoder:
    """Load a text encoder.

    Args:
        name_or_path: "tiny-hash", "gemma-2-2b-it" (official weights via `resolve_weights`), a transformers
            folder, or an `hf://` reference to one.
        caption_channels: C the generator expects (2304 for Gemma-2-2b).
        max_length: L tokens per prompt (300 for the official recipe).
        device, dtype: where the encoder runs and the dtype of the embeddings.
        allow_download: passed to `resolve_weights`.

    Raises:
        MissingWeightsError: weights not on this machine (and not downloadable).
        IncompatibleWeightsError: hidden size != caption_channels, unreadable tokenizer.
    """
    text = str(name_or_path)
    if text == "tiny-hash":
        return TinyTextEncoder(caption_channels=caption_channels, max_length=max_length, device=device, dtype=dtype)
    folder = resolve_weights(component_ref(text), what=f"text encoder ({text})", allow_download=allow_download)
    return Gemma2TextEncoder.from_pretrained(folder, caption_channels=caption_channels, max_length=max_length,
                                             device=device, dtype=dtype)
