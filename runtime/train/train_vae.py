"""Train the tiny causal video autoencoder (`runtime.tiny_vae`) on procedurally rendered worlds; resumable.

    python -m runtime.train.train_vae --out runtime/weights/tiny-world --minutes 8 --device cuda

Data: clips of `--frames` (8k + 1) frames rendered on the fly on the device (`runtime.world.ClipStream`) into a
replay buffer of `--buffer` clips; every step renders `--refresh` new clips and trains on a random batch of
the buffer (random horizontal flips). Loss: L1 + `--grad-weight` x L1 of spatial gradients + `--temporal-weight`
x L1 of frame differences + `--kl` x KL(q(z|x) || N(0, I)) (the decoder sees reparameterised samples, so the
latent space stays smooth for the diffusion model). AdamW, warm-up then cosine decay over the time budget,
bf16 autocast on CUDA.

Outputs in OUT:
- `vae.safetensors`: fp16 weights + float32 per-channel latent statistics (written at every checkpoint with
  running statistics, and at the end with statistics measured over `--stats-batches` fresh batches);
- `log.jsonl`: one JSON record per `--log-every` steps (losses, PSNR, lr, throughput) and a final record with
  held-out PSNR;
- `vae_train_state/`: fp32 weights, optimizer, step, elapsed time, RNG and data-stream position (resumed
  automatically when present; not needed at inference).
"""
from __future__ import annotations

import argparse
import base64
import json
import math
import time
from pathlib import Path

import torch

from runtime.tiny_vae import DEFAULT_CONFIG, TinyVideoAutoencoder, groups_to_video, video_to_groups
from runtime.world.dataset import ClipStream

STATE_DIR = "vae_train_state"
EXPORT_NAME = "vae.safetensors"


# --------------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------------
class ReplayBuffer:
    """A ring of uint8 clips [N, F, H, W, 3] on the device, filled from a ClipStream."""

    def __init__(self, stream: ClipStream, capacity: int) -> None:
        self.stream = stream
        self.capacity = int(capacity)
        self.clips: torch.Tensor | None = None
        self.size = 0
        self.cursor = 0

    def add(self, n_batches: int = 1) -> None:
        for _ in range(n_batches):
            frames = next(self.stream)["frames"]
            if self.clips is None:
                self.clips = torch.empty((self.capacity, *frames.shape[1:]), dtype=torch.uint8, device=frames.device)
            for clip in frames:
                self.clips[self.cursor] = clip
                self.cursor = (self.cursor + 1) % self.capacity
                self.size = min(self.size + 1, self.capacity)

    def sample(self, batch: int, gen: torch.Generator) -> torch.Tensor:
        idx = torch.randint(0, self.size, (batch,), generator=gen)
        return self.clips[idx.to(self.clips.device)]


def to_video(frames: torch.Tensor, flip: torch.Tensor | None = None) -> torch.Tensor:
    """uint8 [B, F, H, W, 3] -> float [B, 3, F, H, W] in [-1, 1]; flip: [B] bool, mirror those clips."""
    video = frames.permute(0, 4, 1, 2, 3).float() / 127.5 - 1.0
    if flip is not None:
        video = torch.where(flip.to(video.device)[:, None, None, None, None], video.flip(-1), video)
    return video


# --------------------------------------------------------------------------------------------------------
# Loss
# --------------------------------------------------------------------------------------------------------
def losses(model: TinyVideoAutoencoder, video: torch.Tensor, noise: torch.Tensor, args, autocast) -> dict:
    """All loss terms (float32 scalars) and the reconstruction for one batch."""
    with autocast:
        mean, logvar = model.encode_moments(video)
        z = mean + torch.exp(0.5 * logvar) * noise.to(mean.dtype)
        groups, _ = model.decode_groups(z)
    groups = groups.float()
    mean, logvar = mean.float(), logvar.float()
    target = video_to_groups(video)
    l1 = (groups - target).abs().mean()
    gx = ((groups[..., :, 1:] - groups[..., :, :-1]) - (target[..., :, 1:] - target[..., :, :-1])).abs().mean()
    gy = ((groups[..., 1:, :] - groups[..., :-1, :]) - (target[..., 1:, :] - target[..., :-1, :])).abs().mean()
    rec = groups_to_video(groups)
    dt = ((rec[:, :, 1:] - rec[:, :, :-1]) - (video[:, :, 1:] - video[:, :, :-1])).abs().mean()
    kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).mean()
    total = l1 + args.grad_weight * (gx + gy) + args.temporal_weight * dt + args.kl * kl
    return {"loss": total, "l1": l1, "grad": gx + gy, "temporal": dt, "kl": kl, "rec": rec, "mean": mean}


def psnr(rec: torch.Tensor, video: torch.Tensor) -> float:
    """PSNR in dB of videos in [-1, 1] (computed on [0, 1])."""
    mse = ((rec.clamp(-1, 1) - video) * 0.5).pow(2).mean().item()
    return 10.0 * math.log10(1.0 / max(mse, 1e-10))


def lr_at(progress: float, step: int, args) -> float:
    warm = min(1.0, (step + 1) / args.warmup)
    cos = 0.5 * (1.0 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))
    return args.lr * warm * (args.min_lr_frac + (1.0 - args.min_lr_frac) * cos)


# --------------------------------------------------------------------------------------------------------
# State
# --------------------------------------------------------------------------------------------------------
def _b64(t: torch.Tensor) -> str:
    return base64.b64encode(t.cpu().numpy().tobytes()).decode("ascii")


def _unb64(s: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8).clone()


def _append_log(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def save_state(out: Path, model, opt, meta: dict) -> None:
    from safetensors.torch import save_file

    sdir = out / STATE_DIR
    sdir.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().float().cpu().contiguous() for k, v in model.state_dict().items()},
              str(sdir / "model.safetensors"))
    osd = opt.state_dict()
    tensors = {}
    for pid, st in osd["state"].items():
        for name, val in st.items():
            tensors[f"{pid}.{name}"] = torch.as_tensor(val).detach().float().cpu().contiguous().reshape(-1) \
                if name == "step" else val.detach().cpu().contiguous()
    save_file(tensors, str(sdir / "optimizer.safetensors"))
    meta = dict(meta, param_groups=osd["param_groups"])
    tmp = sdir / "state.json.tmp"
    tmp.write_text(json.dumps(meta))
    tmp.replace(sdir / "state.json")          # the JSON is written last: its presence marks a complete state


def load_state(out: Path, model, opt, device) -> dict | None:
    from safetensors.torch import load_file

    sdir = out / STATE_DIR
    if not (sdir / "state.json").is_file():
        return None
    meta = json.loads((sdir / "state.json").read_text())
    model.load_state_dict(load_file(str(sdir / "model.safetensors"), device=str(device)))
    flat = load_file(str(sdir / "optimizer.safetensors"), device=str(device))
    state: dict = {}
    for key, val in flat.items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = val.reshape(()).cpu() if name == "step" else val
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    return meta


def export(model: TinyVideoAutoencoder, out: Path, mean: torch.Tensor, std: torch.Tensor) -> Path:
    """Write OUT/vae.safetensors (fp16) with the given latent statistics."""
    model.latent_mean.copy_(mean.to(model.latent_mean))
    model.latent_std.copy_(std.clamp_min(1e-4).to(model.latent_std))
    path = out / EXPORT_NAME
    tmp = path.with_suffix(".tmp")
    model.save(tmp)
    tmp.replace(path)
    return path


@torch.no_grad()
def measure_stats(model, stream: ClipStream, batches: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean / std of raw posterior means over `batches` fresh batches."""
    s1 = s2 = None
    n = 0
    for _ in range(batches):
        mean, _ = model.encode_moments(to_video(next(stream)["frames"]))
        m = mean.float().transpose(0, 1).flatten(1)                        # [C, N]
        s1 = m.sum(1) if s1 is None else s1 + m.sum(1)
        s2 = m.pow(2).sum(1) if s2 is None else s2 + m.pow(2).sum(1)
        n += m.shape[1]
    mu = s1 / n
    return mu, (s2 / n - mu * mu).clamp_min(0).sqrt()


@torch.no_grad()
def evaluate(model, args, device, clips: int) -> dict:
    """Held-out PSNR (eval seeds) of the exported model: whole-video decode, uint8 round trip."""
    stream = ClipStream(min(clips, 4), args.frames, args.height, args.width, device, split="eval",
                        shadows=not args.no_shadows)
    vals, first = [], []
    for _ in range(max(1, clips // stream.batch_size)):
        video = to_video(next(stream)["frames"])
        rec = model.decode_latents(model.encode_video(video))
        rec = ((rec.clamp(-1, 1) + 1) * 127.5).round() / 127.5 - 1
        vals.append(psnr(rec, video))
        first.append(psnr(rec[:, :, :1], video[:, :, :1]))
    return {"eval_psnr": sum(vals) / len(vals), "eval_psnr_first_frame": sum(first) / len(first)}


# --------------------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------------------
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output folder (resumed when it holds vae_train_state/)")
    p.add_argument("--minutes", type=float, default=8.0, help="total wall-clock budget of the run (all resumes)")
    p.add_argument("--max-steps", type=int, default=10 ** 9)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--frames", type=int, default=25, help="raw frames per clip (8k + 1)")
    p.add_argument("--height", type=int, default=144)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--buffer", type=int, default=384, help="clips kept in the replay buffer")
    p.add_argument("--prefill", type=int, default=96, help="clips rendered before the first step")
    p.add_argument("--refresh", type=int, default=2, help="clips rendered per step")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--min-lr-frac", type=float, default=0.05)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--grad-weight", type=float, default=0.5)
    p.add_argument("--temporal-weight", type=float, default=0.5)
    p.add_argument("--kl", type=float, default=1e-4)
    p.add_argument("--save-every-min", type=float, default=2.0)
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--log-name", default="log.jsonl")
    p.add_argument("--stats-batches", type=int, default=8)
    p.add_argument("--eval-clips", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--enc-channels", default=None, help="encoder widths at 1/4,1/8,1/16 (default 48,96,128)")
    p.add_argument("--dec-channels", default=None,
                   help="decoder widths at 1/16,1/8,1/4,1/2 (default 128,96,64,32)")
    p.add_argument("--no-shadows", action="store_true", help="render without shadow rays (faster)")
    p.add_argument("--finish-reserve-s", type=float, default=25.0,
                   help="seconds of the budget kept for statistics, export and evaluation")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if (args.frames - 1) % 8:
        raise SystemExit(f"--frames must be 8k + 1, got {args.frames}")
    t_start = time.time()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(args.seed)
    config = dict(DEFAULT_CONFIG)
    if args.enc_channels:
        config["enc_channels"] = [int(c) for c in args.enc_channels.split(",")]
    if args.dec_channels:
        config["dec_channels"] = [int(c) for c in args.dec_channels.split(",")]
    model = TinyVideoAutoencoder(**config).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay, betas=(0.9, 0.99))
    gen = torch.Generator().manual_seed(args.seed)
    stream = ClipStream(args.refresh, args.frames, args.height, args.width, device, seed=args.seed,
                        shadows=not args.no_shadows)
    meta = load_state(out, model, opt, device)
    step, trained_s = 0, 0.0
    run_mean = torch.zeros(model.latent_channels, device=device)
    run_var = torch.ones(model.latent_channels, device=device)
    if meta is not None:
        step, trained_s = int(meta["step"]), float(meta["elapsed_s"])
        gen.set_state(_unb64(meta["rng"]))
        stream.load_state_dict(meta["stream"])
        run_mean = torch.tensor(meta["run_mean"], device=device)
        run_var = torch.tensor(meta["run_var"], device=device)
        print(f"resumed from step {step} ({trained_s:.0f} s trained)", flush=True)
    budget_s = args.minutes * 60.0
    # The budget is wall-clock from process start (start-up and the buffer prefill count too).
    session_budget = budget_s - trained_s - args.finish_reserve_s
    buffer = ReplayBuffer(stream, args.buffer)
    buffer.add(max(1, math.ceil(min(args.prefill, args.buffer) / args.refresh)))
    print(f"replay buffer: {buffer.size} clips after {time.time() - t_start:.1f} s", flush=True)
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda"
                else torch.autocast("cpu", enabled=False))
    log_path = out / args.log_name

    def checkpoint():
        save_state(out, model, opt, {
            "step": step, "elapsed_s": trained_s + (time.time() - t_start), "rng": _b64(gen.get_state()),
            "stream": stream.state_dict(), "run_mean": run_mean.tolist(), "run_var": run_var.tolist(),
            "args": vars(args)})
        export(model, out, run_mean, run_var.sqrt())

    t_loop = time.time()
    last_save = t_loop
    step0 = step
    model.train()
    while step < args.max_steps and (time.time() - t_start) < session_budget:
        buffer.add(1)
        frames = buffer.sample(args.batch, gen)
        flip = torch.rand(args.batch, generator=gen) < 0.5
        video = to_video(frames, flip)
        T = (args.frames - 1) // 8 + 1
        h, w = args.height // 16, args.width // 16
        noise = torch.randn(args.batch, model.latent_channels, T, h, w, generator=gen).to(device)
        progress = (trained_s + time.time() - t_start) / max(budget_s - args.finish_reserve_s, 1.0)
        lr = lr_at(progress, step, args)
        for g in opt.param_groups:
            g["lr"] = lr
        terms = losses(model, video, noise, args, autocast)
        opt.zero_grad(set_to_none=True)
        terms["loss"].backward()
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        with torch.no_grad():
            m = terms["mean"].transpose(0, 1).flatten(1)
            run_mean.lerp_(m.mean(1), 0.02)
            run_var.lerp_(m.var(1), 0.02)
        if step % args.log_every == 0 or step == 1 or step == args.max_steps:
            rec = {k: float(v.detach()) for k, v in terms.items() if k not in ("rec", "mean")}
            rec.update(step=step, psnr=psnr(terms["rec"].detach(), video), lr=lr, grad_norm=float(gnorm),
                       elapsed_s=round(trained_s + time.time() - t_start, 1), buffer=buffer.size,
                       clips_rendered=stream.index)
            rec["steps_per_s"] = round((step - step0) / max(time.time() - t_loop, 1e-6), 3)
            _append_log(log_path, rec)
            print(json.dumps(rec), flush=True)
        if time.time() - last_save > args.save_every_min * 60.0:
            checkpoint()
            last_save = time.time()
    checkpoint()
    trained_s += time.time() - t_start
    # Final statistics on fresh clips (a separate stream position far from the training clips).
    model.eval()
    stats_stream = ClipStream(max(1, min(args.batch, 8)), args.frames, args.height, args.width, device,
                              seed=args.seed + 1, start=10 ** 7, shadows=not args.no_shadows)
    with autocast:
        mu, sd = measure_stats(model, stats_stream, args.stats_batches)
    path = export(model, out, mu.float(), sd.float())
    exported = TinyVideoAutoencoder.from_file(path, device=device)
    result = evaluate(exported, args, device, args.eval_clips)
    final = {"final": True, "step": step, "trained_s": round(trained_s, 1),
             "wall_s_this_run": round(time.time() - t_start, 1), "weights": str(path),
             "weights_bytes": path.stat().st_size, "latent_mean": mu.tolist(), "latent_std": sd.tolist(), **result}
    _append_log(log_path, final)
    print(json.dumps(final), flush=True)
    return final


if __name__ == "__main__":
    main()
