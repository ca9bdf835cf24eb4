"""Random but valid inputs for the model (tiny config) shared by the model tests."""
import torch

from runtime.camera import actions_to_c2w, camera_conditions, chunk_plucker
from runtime.pipeline import latent_intrinsics as intrinsics_latent


def random_inputs(model, T: int, seed: int = 0, batch: int = 1, actions: str = "wd-40,l-30,ai-30,s-30,none-200"):
    cfg = model.cfg
    g = torch.Generator().manual_seed(seed)
    h, w = cfg.latent_height, cfg.latent_width
    x = torch.randn(batch, cfg.in_channels, T, h, w, generator=g)
    ts = torch.randint(0, 1001, (batch, T), generator=g).float()
    emb = torch.randn(batch, cfg.text_max_length, cfg.caption_channels, generator=g)
    mask = torch.ones(batch, cfg.text_max_length)
    mask[:, cfg.text_max_length // 2:] = 0
    raw = actions_to_c2w(actions)[: 8 * (T - 1) + 1]
    intr = intrinsics_latent(cfg)
    cam = torch.from_numpy(camera_conditions(raw, intr, range(T)))[None].repeat(batch, 1, 1)
    plk = torch.from_numpy(chunk_plucker(raw, intr, range(T), (h, w)))[None].repeat(batch, 1, 1, 1, 1)
    return x, ts, model.prepare_text(emb, mask), cam, plk
