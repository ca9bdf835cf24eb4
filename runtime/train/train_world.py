"""Train the embedded tiny SANA-WM (`tiny-world`) on procedurally rendered worlds; resumable.

    python -m runtime.train.train_world --out runtime/weights/tiny-world --minutes 9 --device cuda

Recipe (chunk-causal flow matching with the streaming sampler's own timesteps):
- clips of 8 (T - 1) + 1 frames rendered on the GPU are encoded once by the frozen tiny autoencoder into a
  pool of latents; a few clips of the pool are re-rendered every `--refresh-every` steps; `--turn-mix P`
  makes a fraction P of them turn-heavy key walks (the default mix under-trains yaw; evaluation is unchanged);
- per chunk an independent timestep: 0 (a clean context chunk, as the streaming cache pass sees it) with
  probability `--p-clean`, else one of the sampler's timesteps (1000, 960, 889, 727) with probability
  `--p-sampler-t`, else uniform in (0, 1000]; clean context chunks get light noise augmentation
  (t in [0, --context-noise], the model is told that t);
- frame 0 is the image frame, always clean at t = 0;
- loss: MSE of the velocity (eps - x0) on the noisy chunks; AdamW, warm-up, grad clip, EMA weights.
Training directly on the few sampler timesteps makes the model a 4-step student without a separate
distillation stage (the model card says so).
Checkpoints (`train_state.pt`) every `--save-every-min` minutes; `model.safetensors` (EMA) at the end; losses in
`train_log.jsonl`.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import torch
import yaml

from runtime.camera_torch import camera_conditions_torch, chunk_plucker_torch
from runtime.checkpoint import save_checkpoint
from runtime.model import build_model, chunk_ranges


def latent_intrinsics_torch(intr_px: torch.Tensor, cfg) -> torch.Tensor:
    """[B, 4] pixel intrinsics of model-resolution frames -> latent pixels."""
    sx, sy = cfg.latent_width / cfg.width, cfg.latent_height / cfg.height
    return intr_px * torch.tensor([sx, sy, sx, sy], device=intr_px.device)


class LatentPool:
    """Clips rendered on the device and encoded once: latents, camera tensors and captions."""

    def __init__(self, vae, cfg, size: int, latent_frames: int, device, seed: int = 0, render_batch: int = 8,
                 turn_mix: float = 0.0):
        from runtime.world.dataset import ClipStream

        self.vae, self.cfg, self.size, self.T = vae, cfg, size, latent_frames
        # turn_mix: the fraction of rendered clips that are turn-heavy key walks (picked per clip seed).
        self.stream = ClipStream(render_batch, 8 * (latent_frames - 1) + 1, cfg.height, cfg.width, device, seed=seed,
                                 turn_mix=turn_mix)
        self.latents = self.cams = self.pluckers = None
        self.captions: list[str] = []
        self.cursor = 0
        while len(self.captions) < size:
            self.refresh(render_batch)

    @torch.no_grad()
    def _encode(self, batch):
        cfg = self.cfg
        video = batch["frames"].permute(0, 4, 1, 2, 3).float() / 127.5 - 1.0      # [B, 3, F, H, W]
        lat = self.vae.encode_video(video).float()
        c2w = batch["c2w"].float()
        intr = latent_intrinsics_torch(batch["intrinsics"].float(), cfg)[:, None]   # [B, 1, 4]: shared by all frames
        frames = list(range(self.T))
        cam = camera_conditions_torch(c2w, intr, frames)
        plk = chunk_plucker_torch(c2w, intr, frames, (cfg.latent_height, cfg.latent_width))
        return lat, cam, plk

    def refresh(self, n: int):
        batch = next(self.stream)
        lat, cam, plk = self._encode(batch)
        lat, cam, plk = lat[:n], cam[:n], plk[:n]
        caps = batch["captions"][:n]
        if self.latents is None or self.latents.shape[0] < self.size:
            grow = lambda a, b: (b if a is None else torch.cat([a, b]))[: self.size]
            self.latents, self.cams, self.pluckers = grow(self.latents, lat), grow(self.cams, cam), grow(self.pluckers, plk)
            self.captions = (self.captions + caps)[: self.size]
            return
        for i in range(len(caps)):
            j = self.cursor % self.size
            self.latents[j], self.cams[j], self.pluckers[j] = lat[i], cam[i], plk[i]
            self.captions[j] = caps[i]
            self.cursor += 1

    def sample(self, batch: int, gen: torch.Generator):
        idx = torch.randint(0, self.latents.shape[0], (batch,), generator=gen).tolist()
        dev = self.latents.device
        ix = torch.tensor(idx, device=dev)
        return self.latents[ix], self.cams[ix], self.pluckers[ix], [self.captions[i] for i in idx]


def sample_timesteps(B: int, chunks, sampler_ts, args, gen: torch.Generator) -> torch.Tensor:
    """[B, T] per-frame timesteps, constant inside a chunk; frame 0 always 0."""
    T = chunks[-1][1]
    t = torch.zeros(B, T)
    cand = torch.tensor([float(s) for s in sampler_ts if s > 0])
    for s, e in chunks:
        u = torch.rand(B, generator=gen)
        pick = cand[torch.randint(0, len(cand), (B,), generator=gen)]
        uni = torch.rand(B, generator=gen) * 999.0 + 1.0
        noisy = torch.where(torch.rand(B, generator=gen) < args.p_sampler_t, pick, uni)
        ctx = torch.rand(B, generator=gen) * args.context_noise
        t[:, s:e] = torch.where(u < args.p_clean, ctx, noisy)[:, None]
    t[:, 0] = 0.0
    return t


def lr_at(step: int, args) -> float:
    """Linear warm-up, constant, then (with --decay-steps) a cosine decay from --decay-start down to
    --lr-final * lr, held there after."""
    warm = min(1.0, (step - args.warmup_start + 1) / args.warmup)
    if args.decay_steps <= 0 or step < args.decay_start:
        return args.lr * warm
    frac = min(1.0, (step - args.decay_start) / args.decay_steps)
    return args.lr * warm * (args.lr_final + (1 - args.lr_final) * 0.5 * (1 + math.cos(math.pi * frac)))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--vae", help="tiny autoencoder weights (default: OUT/vae.safetensors)")
    p.add_argument("--config", default="tiny-world")
    p.add_argument("--minutes", type=float, default=9.0)
    p.add_argument("--max-steps", type=int, default=10**9)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--latent-frames", type=int, default=10)
    p.add_argument("--pool", type=int, default=512)
    p.add_argument("--refresh-every", type=int, default=20)
    p.add_argument("--refresh", type=int, default=8)
    p.add_argument("--lr", type=float, default=4e-4)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--decay-start", type=int, default=0, help="step where the cosine learning-rate decay starts")
    p.add_argument("--decay-steps", type=int, default=0, help="length of the decay (0: constant learning rate)")
    p.add_argument("--lr-final", type=float, default=0.05, help="final learning rate as a fraction of --lr")
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--p-clean", type=float, default=0.3)
    p.add_argument("--p-sampler-t", type=float, default=0.7)
    p.add_argument("--context-noise", type=float, default=40.0)
    p.add_argument("--save-every-min", type=float, default=2.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--turn-mix", type=float, default=0.0, metavar="P",
                   help="fraction in [0, 1] of training clips that are turn-heavy key walks (more a/d yaw); "
                   "0 keeps the default mix; evaluation clips never change")
    p.add_argument("--state-dir", help="resumable state (default: OUT/train_state); files stay under 16 MB each")
    p.add_argument("--init-from", help="start from these weights (e.g. the shipped model.safetensors, whose step "
                   "count it takes) with a fresh optimizer and a new warm-up, when no resumable state exists")
    p.set_defaults(warmup_start=0)   # the step the warm-up counts from (set by --init-from)
    args = p.parse_args(argv)
    if not 0.0 <= args.turn_mix <= 1.0:   # also rejects NaN
        p.error(f"--turn-mix must be in [0, 1], got {args.turn_mix}")

    # The Triton kernels are inference-only (no backward): train through the PyTorch references.
    os.environ["SANA_WM_KERNELS"] = "reference"
    from runtime.text_encoder import load_text_encoder
    from runtime.tiny_vae import TinyVideoAutoencoder

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)
    start = time.time()
    model = build_model(args.config, device=device, dtype=torch.float32, init="official", seed=args.seed).train()
    cfg = model.cfg
    ema = build_model(args.config, device=device, dtype=torch.float32, init="official").eval()
    ema.load_state_dict(model.state_dict())
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01, betas=(0.9, 0.99))
    gen = torch.Generator().manual_seed(args.seed)
    step = 0
    state_dir = Path(args.state_dir) if args.state_dir else out / "train_state"
    stream_state = None
    if (state_dir / "meta.pt").is_file():
        meta = torch.load(state_dir / "meta.pt", weights_only=False)
        model.load_state_dict(torch.load(state_dir / "model.pt", map_location=device))
        ema.load_state_dict(torch.load(state_dir / "ema.pt", map_location=device))
        opt.load_state_dict(torch.load(state_dir / "opt.pt", map_location=device))
        gen.set_state(meta["rng"])
        step, stream_state = meta["step"], meta["stream"]
        print(f"resumed from step {step}")
    elif args.init_from:
        step = _init_from(args.init_from, model, ema)
        args.warmup_start = step
        print(f"initialised from {args.init_from} (step {step}), fresh optimizer")
    _wake_plucker(model, ema, seed=args.seed)
    vae = TinyVideoAutoencoder.from_file(args.vae or out / "vae.safetensors").to(device).eval()
    text_enc = load_text_encoder(cfg.text_encoder, caption_channels=cfg.caption_channels,
                                 max_length=cfg.text_max_length, device=device)
    pool = LatentPool(vae, cfg, args.pool, args.latent_frames, device, seed=args.seed + 7919 * (step + 1),
                      turn_mix=args.turn_mix)
    if stream_state is not None:
        pool.stream.load_state_dict({**stream_state, "index": stream_state["index"] + args.pool})
    chunks = chunk_ranges(args.latent_frames, cfg.first_chunk_size, cfg.chunk_size)
    log = open(out / "train_log.jsonl", "a")  # noqa: SIM115 - appended to for the whole run, closed at its end
    last_save = time.time()
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast(
        "cpu", enabled=False)
    print(f"pool of {pool.latents.shape[0]} clips ready after {time.time() - start:.0f} s")
    losses = []
    while step < args.max_steps and time.time() - start < args.minutes * 60:
        if step % args.refresh_every == 0 and step:
            pool.refresh(args.refresh)
        x0, cam, plk, caps = pool.sample(args.batch, gen)
        B = x0.shape[0]
        t = sample_timesteps(B, chunks, cfg.denoising_timesteps, args, gen).to(device)
        sigma = (t / 1000.0)[:, None, :, None, None]
        eps = torch.randn(x0.shape, generator=gen).to(device)
        xt = (1 - sigma) * x0 + sigma * eps
        emb, mask = text_enc.encode(caps)
        with autocast:
            text = model.prepare_text(emb, mask)
            v = model(xt, t, text, cam, plk, chunks=chunks)
        weight = (t > 0).float()[:, None, :, None, None]
        loss = ((v.float() - (eps - x0)) ** 2 * weight).sum() / (weight.sum() * x0.shape[1] * x0[0, 0, 0].numel())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args)
        opt.step()
        with torch.no_grad():
            decay = min(args.ema, (1 + step) / (10 + step))
            for pe, pm in zip(ema.parameters(), model.parameters()):
                pe.lerp_(pm, 1 - decay)
        step += 1
        losses.append(loss.item())
        if step % 50 == 0:
            rec = {"step": step, "loss": sum(losses) / len(losses), "grad_norm": float(gnorm),
                   "lr": lr_at(step, args), "elapsed_s": round(time.time() - start, 1)}
            losses = []
            log.write(json.dumps(rec) + "\n")
            log.flush()
            print(rec, flush=True)
        if time.time() - last_save > args.save_every_min * 60:
            _save_state(state_dir, model, ema, opt, gen, step, pool)
            last_save = time.time()
    _save_state(state_dir, model, ema, opt, gen, step, pool)
    save_checkpoint(ema, out / "model.safetensors", {"config": cfg.name, "steps": step})
    (out / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    print(f"done: {step} steps in {time.time() - start:.0f} s -> {out / 'model.safetensors'}")
    return 0


def _init_from(path: str, model, ema) -> int:
    """Load weights into both the trained model and its EMA; return the step count stored with them."""
    from safetensors import safe_open

    from runtime.checkpoint import load_checkpoint

    load_checkpoint(model, path)
    ema.load_state_dict(model.state_dict())
    with safe_open(path, framework="pt") as f:
        return int((f.metadata() or {}).get("steps", 0))


def _wake_plucker(model, ema, seed: int) -> None:
    """The official init zeroes both the Plucker embedder and every block's plucker_proj, a saddle where neither
    gets a gradient (the branch stays exactly zero when trained from scratch). Give the embedder small random
    weights; the zero plucker_proj keeps the model's output unchanged, and both start to learn."""
    emb = model.plucker_embedder.proj.weight
    if emb.abs().max() > 0:
        return
    gen = torch.Generator(device="cpu").manual_seed(seed + 4242)
    with torch.no_grad():
        w = torch.randn(emb.shape, generator=gen) / emb[0].numel() ** 0.5
        emb.copy_(w.to(emb.device))
        ema.plucker_embedder.proj.weight.copy_(emb)
    print("plucker embedder initialised (was all zero)")


def _save_state(state_dir: Path, model, ema, opt, gen, step, pool) -> None:
    """One file per part (the device tool returns files of at most 16 MB); meta.pt last marks completeness."""
    state_dir.mkdir(parents=True, exist_ok=True)
    parts = {"model.pt": model.state_dict(), "ema.pt": ema.state_dict(), "opt.pt": opt.state_dict(),
             "meta.pt": {"rng": gen.get_state(), "step": step, "stream": pool.stream.state_dict()}}
    for name, obj in parts.items():
        tmp = state_dir / (name + ".tmp")
        torch.save(obj, tmp)
        tmp.replace(state_dir / name)


if __name__ == "__main__":
    raise SystemExit(main())
