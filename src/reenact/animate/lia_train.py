"""Training LIA as the paper does (official trainer at wyhsirius/LIA@1091c2d, rewritten).

A sample is two frames of one video (source, target); the generator reconstructs the target
from the source with the target's motion (absolute mode). Generator loss: L1 + a multi-scale
VGG19 perceptual loss (image pyramid 1, 1/2, 1/4, 1/8; relu1_1..relu5_1, each weight 10) + a
non-saturating GAN loss against a StyleGAN2 ResNet discriminator with minibatch stddev; the
discriminator takes the logistic loss. Adam as the reference: lr 0.002 scaled by
reg_every / (reg_every + 1), betas (0, 0.99 ** ratio); no R1 / path-length terms (the reference
has none).

Runs on one process, or on several with torch.distributed (torchrun; NCCL on GPUs, gloo on
CPU). On CUDA it trains in bf16 autocast by default. Every `save_every` steps rank 0 writes
`<out>/checkpoint/<step:06d>.pt` in the official layout {gen, dis, g_optim, d_optim, args}
(args an argparse.Namespace, with `step`); SIGTERM/SIGINT save the current step before exiting.
Training resumes from the newest checkpoint; the data of step i are drawn from a generator
seeded by (seed, i, rank), so a resumed run repeats exactly what the killed one would have done.
Losses go to the console and to TensorBoard (`<out>/log`).

    reenact train lia --data DIR --out runs/lia            # one process
    torchrun --nproc_per_node 8 -m reenact.animate.lia_train --data DIR --out runs/lia
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import re
import signal
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from reenact.animate.lia import ConvLayer, EqualLinear, Generator, LiaConfig, ResBlock, atomic_save
from reenact.errors import ReenactError
from reenact.media.video import iter_frames

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = {".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v"}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}


@dataclass
class TrainConfig:
    data: str
    out: str = "runs/lia"
    size: int = 256
    style_dim: int = 512
    motion_dim: int = 20
    channel_multiplier: int = 1
    max_channels: int = 512
    batch_size: int = 32  # global, split over processes
    iters: int = 800_000  # total steps (a resumed run stops at the same step)
    lr: float = 0.002
    g_reg_every: int = 4
    d_reg_every: int = 16
    save_every: int = 1000
    log_every: int = 100
    vgg_weights: str | None = None  # torchvision vgg19-dcbb9e9d.pth; None: random (tests only)
    precision: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU) | bf16 | fp32
    max_frames: int = 0  # frames kept per video (0: all), for small machines
    seed: int = 0
    device: str = "auto"

    @property
    def model(self) -> LiaConfig:
        return LiaConfig(self.size, self.style_dim, self.motion_dim, self.channel_multiplier, self.max_channels)


# ----------------------------------------------------------------------------- data


class PairDataset(torch.utils.data.Dataset):
    """Two frames of one video per item; item i is drawn from a generator seeded by (seed, i).

    `root` holds videos and/or folders of frames (one folder per video), found recursively.
    Videos are decoded once and kept, resized, in memory.
    """

    def __init__(self, root: str | Path, size: int, seed: int = 0, max_frames: int = 0):
        root = Path(root)
        if not root.is_dir():
            raise ReenactError("training data folder not found", root)
        self.size, self.seed, self.max_frames = size, seed, max_frames
        self.items: list[Path | list[Path]] = []
        for p in sorted(root.rglob("*")):
            if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES:
                self.items.append(p)
            elif p.is_dir():
                frames = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
                if len(frames) >= 2:
                    self.items.append(frames)
        if not self.items:
            raise ReenactError("no videos or frame folders (two images or more) found", root)
        self._cache: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return 2**62  # indices are sample numbers, not positions

    def _resize(self, img: np.ndarray) -> np.ndarray:
        import cv2

        if img.shape[:2] != (self.size, self.size):
            img = cv2.resize(img, (self.size, self.size), interpolation=cv2.INTER_AREA)
        return img

    def _video(self, k: int) -> np.ndarray:
        if k not in self._cache:
            frames = []
            for frame in iter_frames(self.items[k]):
                frames.append(self._resize(frame))
                if self.max_frames and len(frames) >= self.max_frames:
                    break
            if len(frames) < 2:
                raise ReenactError("video has fewer than two frames", self.items[k])
            self._cache[k] = np.stack(frames)
        return self._cache[k]

    def _frames(self, k: int, idx: tuple[int, int]) -> list[np.ndarray]:
        item = self.items[k]
        if isinstance(item, Path):
            v = self._video(k)
            return [v[i] for i in idx]
        import cv2

        return [self._resize(cv2.cvtColor(cv2.imread(str(item[i])), cv2.COLOR_BGR2RGB)) for i in idx]

    def n_frames(self, k: int) -> int:
        item = self.items[k]
        n = len(self._video(k)) if isinstance(item, Path) else len(item)
        return min(n, self.max_frames) if self.max_frames else n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.seed, i])
        k = int(rng.integers(len(self.items)))
        idx = tuple(int(j) for j in rng.choice(self.n_frames(k), 2, replace=False))
        imgs = np.stack(self._frames(k, idx))
        x = torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        return x[0], x[1]


# ----------------------------------------------------------------------------- losses and networks


class AntiAliasDownsample(nn.Module):
    """Gaussian blur then subsampling by 1/scale (FOMM's AntiAliasInterpolation2d)."""

    def __init__(self, channels: int, scale: float):
        super().__init__()
        sigma = (1 / scale - 1) / 2
        ks = 2 * round(sigma * 4) + 1
        self.ka, self.kb = ks // 2, (ks // 2 - 1 if ks % 2 == 0 else ks // 2)
        grid = torch.arange(ks, dtype=torch.float32)
        g = torch.exp(-((grid - (ks - 1) / 2) ** 2) / (2 * sigma**2)) if scale < 1 else torch.ones(1)
        kernel = g[:, None] * g[None, :]
        self.register_buffer("weight", (kernel / kernel.sum()).expand(channels, 1, ks, ks).contiguous())
        self.scale, self.step = scale, int(1 / scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.scale == 1.0:
            return x
        x = F.pad(x, (self.ka, self.kb, self.ka, self.kb))
        return F.conv2d(x, self.weight.to(x.dtype), groups=x.shape[1])[:, :, ::self.step, ::self.step]


VGG19_LAYERS = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512]


class VGG19Features(nn.Module):
    """torchvision's vgg19().features (same indices, so its state dict loads), cut after relu5_1."""

    def __init__(self):
        super().__init__()
        layers: list[nn.Module] = []
        c = 3
        for v in VGG19_LAYERS:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(c, v, 3, padding=1), nn.ReLU(inplace=False)]
                c = v
        self.features = nn.Sequential(*layers[:30])
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))
        self.requires_grad_(False)

    def load(self, path: str | Path) -> None:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any failure is a bad weights file
            raise ReenactError(f"cannot read VGG19 weights: {exc}", path) from exc
        state = {k: v for k, v in state.items() if k.startswith("features.") and int(k.split(".")[1]) < 30}
        missing, _ = self.load_state_dict(state, strict=False)
        if any(k.startswith("features.") for k in missing):
            raise ReenactError("not torchvision VGG19 weights (features.* missing)", path)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = ((x.clamp(-1, 1) + 1) / 2 - self.mean) / self.std
        outs = []
        for a, b in ((0, 2), (2, 7), (7, 12), (12, 21), (21, 30)):
            x = self.features[a:b](x)
            outs.append(x)
        return outs


class VGGLoss(nn.Module):
    """Multi-scale perceptual loss: sum over scales and layers of 10 * mean |vgg(a) - vgg(b)|."""

    def __init__(self, weights_path: str | Path | None = None, scales=(1, 0.5, 0.25, 0.125), weight: float = 10.0):
        super().__init__()
        self.vgg = VGG19Features()
        if weights_path:
            self.vgg.load(weights_path)
        else:
            log.warning("VGG19 weights not given: the perceptual loss uses a random VGG (for tests only)")
        self.pyramid = nn.ModuleList(AntiAliasDownsample(3, s) for s in scales)
        self.weight = weight

    def forward(self, recon: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        loss = recon.new_zeros(())
        for down in self.pyramid:
            if recon.shape[-1] * down.scale < 16:  # VGG pools four times (tiny test models only)
                continue
            for a, b in zip(self.vgg(down(recon)), self.vgg(down(real))):
                loss = loss + self.weight * (a - b.detach()).abs().mean()
        return loss


class Discriminator(nn.Module):
    """StyleGAN2 ResNet discriminator with minibatch stddev (the official layout and key names)."""

    def __init__(self, cfg: LiaConfig):
        super().__init__()
        ch = cfg.dec_channels
        convs: list[nn.Module] = [ConvLayer(3, ch(cfg.size), 1)]
        in_c = ch(cfg.size)
        for i in range(int(math.log2(cfg.size)), 2, -1):
            convs.append(ResBlock(in_c, ch(2 ** (i - 1))))
            in_c = ch(2 ** (i - 1))
        self.convs = nn.Sequential(*convs)
        self.stddev_group, self.stddev_feat = 4, 1
        self.final_conv = ConvLayer(in_c + 1, ch(4), 3)
        self.final_linear = nn.Sequential(EqualLinear(ch(4) * 16, ch(4), activation="fused_lrelu"),
                                          EqualLinear(ch(4), 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.convs(x)
        b, c, h, w = out.shape
        group = min(b, self.stddev_group)
        if b % group:
            group = 1
        s = out.view(group, -1, self.stddev_feat, c // self.stddev_feat, h, w)
        s = torch.sqrt(s.var(0, unbiased=False) + 1e-8).mean([2, 3, 4], keepdim=True).squeeze(2)
        out = torch.cat([out, s.repeat(group, 1, h, w)], 1)
        return self.final_linear(self.final_conv(out).view(b, -1))


# ----------------------------------------------------------------------------- training loop


def _dist_info() -> tuple[int, int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return world, int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))


def latest_checkpoint(folder: Path) -> Path | None:
    found = sorted((int(m.group(1)), p) for p in folder.glob("*.pt") if (m := re.fullmatch(r"(\d+)\.pt", p.name)))
    return found[-1][1] if found else None


def load_training_checkpoint(path: Path) -> dict:
    with torch.serialization.safe_globals([argparse.Namespace]):
        return torch.load(path, map_location="cpu", weights_only=True)


def train(cfg: TrainConfig, on_step: Callable[[int, dict], None] | None = None) -> Path:
    """Train (or resume) until `cfg.iters` steps; returns the last checkpoint written."""
    world, rank, local_rank = _dist_info()
    if cfg.device == "auto":
        device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(cfg.device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if cfg.batch_size % world:
        raise ReenactError(f"batch size {cfg.batch_size} is not a multiple of the {world} processes")
    precision = cfg.precision if cfg.precision != "auto" else ("bf16" if device.type == "cuda" else "fp32")
    amp_dtype = torch.bfloat16 if precision == "bf16" else None

    out = Path(cfg.out)
    ckpt_dir, log_dir = out / "checkpoint", out / "log"
    if rank == 0:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)  # same initial weights on every rank
    gen, dis = Generator(cfg.model).to(device), Discriminator(cfg.model).to(device)
    g_ratio, d_ratio = cfg.g_reg_every / (cfg.g_reg_every + 1), cfg.d_reg_every / (cfg.d_reg_every + 1)
    g_optim = torch.optim.Adam(gen.parameters(), lr=cfg.lr * g_ratio, betas=(0.0, 0.99**g_ratio))
    d_optim = torch.optim.Adam(dis.parameters(), lr=cfg.lr * d_ratio, betas=(0.0, 0.99**d_ratio))
    vgg_loss = VGGLoss(cfg.vgg_weights).to(device)

    step = 0
    last = latest_checkpoint(ckpt_dir) if ckpt_dir.exists() else None
    if last is not None:
        ckpt = load_training_checkpoint(last)
        gen.load_state_dict(ckpt["gen"])
        dis.load_state_dict(ckpt["dis"])
        g_optim.load_state_dict(ckpt["g_optim"])
        d_optim.load_state_dict(ckpt["d_optim"])
        step = int(vars(ckpt["args"]).get("step", int(last.stem)))
        if rank == 0:
            log.info("resumed from %s at step %d", last, step)

    g_model, d_model = gen, dis
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [device.index] if device.type == "cuda" else None
        g_model = DDP(gen, device_ids=ids, find_unused_parameters=True)  # to_rgb1 and noise are unused
        d_model = DDP(dis, device_ids=ids)

    per_rank = cfg.batch_size // world
    data = PairDataset(cfg.data, cfg.size, cfg.seed, cfg.max_frames)

    def batch(i: int) -> tuple[torch.Tensor, torch.Tensor]:
        pairs = [data[(i * world + rank) * per_rank + j] for j in range(per_rank)]
        return (torch.stack([p[0] for p in pairs]).to(device), torch.stack([p[1] for p in pairs]).to(device))

    writer = None
    if rank == 0:
        try:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(log_dir))
        except ImportError:
            log.warning("tensorboard is not installed: losses go to the console only")

    def save(i: int) -> Path:
        path = ckpt_dir / f"{i:06d}.pt"
        if rank == 0:
            args = argparse.Namespace(**asdict(cfg), step=i, latent_dim_style=cfg.style_dim,
                                      latent_dim_motion=cfg.motion_dim)
            atomic_save({"gen": gen.state_dict(), "dis": dis.state_dict(), "g_optim": g_optim.state_dict(),
                         "d_optim": d_optim.state_dict(), "args": args}, path)
            log.info("saved %s", path)
        return path

    stop = {"flag": False}

    def request_stop(signum, frame):  # noqa: ARG001
        stop["flag"] = True

    import threading

    old_handlers = ({s: signal.signal(s, request_stop) for s in (signal.SIGTERM, signal.SIGINT)}
                    if threading.current_thread() is threading.main_thread() else {})
    autocast = (lambda: torch.autocast(device.type, dtype=amp_dtype)) if amp_dtype else (
        lambda: torch.autocast(device.type, enabled=False))
    saved = last
    t0 = time.time()
    try:
        while step < cfg.iters and not stop["flag"]:
            src, tgt = batch(step)
            # generator
            gen.requires_grad_(True)
            dis.requires_grad_(False)
            with autocast():
                recon = g_model(src, tgt)
                l_vgg = vgg_loss(recon.float(), tgt)
                l_l1 = F.l1_loss(recon.float(), tgt)
                l_gan = F.softplus(-dis(recon)).float().mean()  # D's grads are not needed here
            g_optim.zero_grad(set_to_none=True)
            (l_vgg + l_l1 + l_gan).backward()
            g_optim.step()
            # discriminator
            gen.requires_grad_(False)
            dis.requires_grad_(True)
            with autocast():
                l_d = (F.softplus(-d_model(tgt)).float().mean() + F.softplus(d_model(recon.detach())).float().mean())
            d_optim.zero_grad(set_to_none=True)
            l_d.backward()
            d_optim.step()
            step += 1

            losses = {"vgg_loss": l_vgg.item(), "l1_loss": l_l1.item(), "gen_loss": l_gan.item(),
                      "dis_loss": l_d.item()}
            if rank == 0:
                if writer is not None:
                    for k, v in losses.items():
                        writer.add_scalar(k, v, step)
                if step % cfg.log_every == 0 or step == cfg.iters:
                    rate = step / max(time.time() - t0, 1e-9)
                    log.info("[step %d/%d] vgg %.4f l1 %.4f g %.4f d %.4f (%.2f steps/s)", step, cfg.iters,
                             *losses.values(), rate)
                    print(f"[step {step}/{cfg.iters}] " + " ".join(f"{k} {v:.4f}" for k, v in losses.items()),
                          flush=True)
            if on_step:
                on_step(step, losses)
            if step % cfg.save_every == 0 or step == cfg.iters:
                saved = save(step)
        if stop["flag"] and (saved is None or saved.name != f"{step:06d}.pt"):
            saved = save(step)  # killed politely: keep every finished step
    finally:
        for s, h in old_handlers.items():
            signal.signal(s, h)
        if writer is not None:
            writer.close()
        if world > 1 and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()
    return saved if saved is not None else ckpt_dir / f"{step:06d}.pt"


def main(argv: list[str] | None = None) -> None:
    """`python -m reenact.animate.lia_train` / torchrun entry point (flags = TrainConfig fields)."""
    ap = argparse.ArgumentParser(description="Train LIA (see module docstring).")
    for f in fields(TrainConfig):
        name = "--" + f.name.replace("_", "-")
        if f.name == "data":
            ap.add_argument(name, required=True)
        else:
            kind = {"int": int, "float": float}.get(str(f.type), str)
            ap.add_argument(name, type=kind, default=f.default)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads()))))
    try:
        path = train(TrainConfig(**vars(args)))
    except ReenactError as exc:
        raise SystemExit(f"{exc}") from exc
    if _dist_info()[1] == 0:
        print(f"last checkpoint: {path}")


if __name__ == "__main__":
    main()
