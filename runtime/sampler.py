"""The distilled few-step sampler of one chunk (spec section 6.4).

Flow matching: x_t = (1 - s) x0 + s eps with s = t / 1000, and the model predicts v = eps - x0, so an Euler
step from s to s' is x + (s' - s) v. The chunk is denoised alone against the cached context, then one more
pass on the clean chunk at t = 0 writes the caches (the model's own output becomes the context).
"""
from __future__ import annotations

import torch
from torch import Tensor


@torch.no_grad()
def denoise_chunk(model, noise: Tensor, text, camera: Tensor, plucker: Tensor, cache, timesteps,
                  clean_first: Tensor | None = None, write_cache: bool = True,
                  positions: Tensor | None = None) -> Tensor:
    """Denoise one chunk and (by default) write its state into `cache`.

    Args:
        noise: [B, C, T, h, w] initial noise of the chunk's latent frames.
        camera, plucker: the chunk's camera tensors ([B, T, 20], [B, P, T, h, w]).
        cache: the session's StreamCache (positions come from it).
        timesteps: descending, ending with 0, e.g. (1000, 960, 889, 727, 0).
        clean_first: [B, C, h, w] latent of the first image: frame 0 is held clean at t = 0 (first chunk).
        positions: [T] absolute latent indices as a device tensor (CUDA-graph replays), else from the cache.
    Returns:
        [B, C, T, h, w] clean latents.
    """
    B, _, T = noise.shape[:3]
    x = noise.clone()
    if clean_first is not None:
        x[:, :, 0] = clean_first
    sigmas = [t / 1000.0 for t in timesteps]
    # the same for every pass of the chunk (the cache pass commits the chunk after it has run)
    plucker_terms = model.plucker_terms(plucker)
    tables = model.frame_tables(camera, T, cache=cache, positions=positions)
    for i in range(len(timesteps) - 1):
        t = torch.full((B, T), float(timesteps[i]), device=x.device)
        if clean_first is not None:
            t[:, 0] = 0.0
        v = model(x, t, text, camera, plucker, cache=cache, positions=positions, plucker_terms=plucker_terms,
                  frame_tables=tables)
        x = x + (sigmas[i + 1] - sigmas[i]) * v.to(x.dtype)
        if clean_first is not None:
            x[:, :, 0] = clean_first
    if write_cache:
        zeros = torch.zeros(B, T, device=x.device)
        model(x, zeros, text, camera, plucker, cache=cache, write_cache=True, positions=positions,
              plucker_terms=plucker_terms, frame_tables=tables)
    return x
