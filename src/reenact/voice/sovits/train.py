"""Train (or fine-tune) a so-vits-svc 4.x voice model on a prepared reenact dataset.

Design source: VITS (Kim et al. 2021, github.com/jaywalnut310/vits, MIT) and so-vits-svc /
so-vits-svc-fork (github.com/voicepaw/so-vits-svc-fork, MIT), whose discriminators, losses,
spectrograms, data layout and training step this module re-implements in plain PyTorch.

Files in the model folder, in the fork's layout, so that so-vits-svc-fork can use them:

  config.json          the fork's config (``svc infer -c`` accepts it); speaker name -> id in "spk"
  G_{step}.pth         {"model", "iteration" (epoch, as the fork writes), "optimizer", "learning_rate"}
  D_{step}.pth         the same for the discriminator; only the last `keep_ckpts` pairs are kept
  train_state.pt       what the fork does not know about: step, epoch, position in the epoch,
                       schedulers, grad scaler and every rank's RNG state, for an exact resume
  cache/               per-clip features: 44.1 kHz audio, linear and mel spectrogram, content
                       features at the model's hop, F0 and voicing
  logs/                TensorBoard: losses, learning rate, grad norms, audio samples at eval

A killed run resumes from the newest checkpoint at the same step and, on the same machine,
ends at the same weights as a run that was never interrupted. With WORLD_SIZE > 1 (torchrun)
training is data-parallel (DDP; gloo on CPU, nccl on GPU); rank 0 writes. AMP (bf16/fp16)
only on CUDA.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import re
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from reenact.errors import ReenactError
from reenact.files import atomic_write, write_text
from reenact.voice import signal as S
from reenact.voice.dataset import dataset_clips
from reenact.voice.sovits import content as C
from reenact.voice.sovits import model as sovits

log = logging.getLogger(__name__)

LRELU_SLOPE = 0.1


# ---------------------------------------------------------------- discriminators


def _norm(module: nn.Module, spectral: bool = False) -> nn.Module:
    if spectral:
        return nn.utils.spectral_norm(module)
    with warnings.catch_warnings():  # classic weight norm: keys weight_g / weight_v, as the fork's
        warnings.simplefilter("ignore")
        return nn.utils.weight_norm(module)


def _conv_stack(convs: nn.ModuleList, conv_post: nn.Module, x: Tensor) -> tuple[Tensor, list[Tensor]]:
    """A discriminator's body: convolutions with leaky ReLU, then the score; returns (score, feature maps)."""
    fmap = []
    for conv in convs:
        x = F.leaky_relu(conv(x), LRELU_SLOPE)
        fmap.append(x)
    x = conv_post(x)
    fmap.append(x)
    return x.flatten(1), fmap


class DiscriminatorP(nn.Module):
    """Period discriminator: the waveform folded into `period` columns, 2-D convolutions."""

    def __init__(self, period: int, kernel_size: int = 5, stride: int = 3, use_spectral_norm: bool = False,
                 width: float = 1.0):
        super().__init__()
        self.period = period
        chans = [1] + [int(c * width) for c in (32, 128, 512, 1024, 1024)]
        pad = ((kernel_size - 1) // 2, 0)
        self.convs = nn.ModuleList([
            _norm(nn.Conv2d(a, b, (kernel_size, 1), (stride if i < 4 else 1, 1), pad), use_spectral_norm)
            for i, (a, b) in enumerate(zip(chans, chans[1:]))])
        self.conv_post = _norm(nn.Conv2d(chans[-1], 1, (3, 1), 1, (1, 0)), use_spectral_norm)

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        b, c, t = x.shape
        if t % self.period:
            x = F.pad(x, (0, self.period - t % self.period), "reflect")
        return _conv_stack(self.convs, self.conv_post, x.view(b, c, -1, self.period))


class DiscriminatorS(nn.Module):
    """Scale discriminator on the raw waveform (grouped 1-D convolutions)."""

    def __init__(self, use_spectral_norm: bool = False, width: float = 1.0):
        super().__init__()
        chans = [1] + [int(c * width) for c in (16, 64, 256, 1024, 1024, 1024)]
        layers = [(15, 1, 1, 7), (41, 4, 4, 20), (41, 4, 16, 20), (41, 4, 64, 20), (41, 4, 256, 20), (5, 1, 1, 2)]
        self.convs = nn.ModuleList([
            _norm(nn.Conv1d(a, b, k, s, groups=max(1, int(g * width)), padding=p), use_spectral_norm)
            for a, b, (k, s, g, p) in zip(chans, chans[1:], layers)])
        self.conv_post = _norm(nn.Conv1d(chans[-1], 1, 3, 1, padding=1), use_spectral_norm)

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        return _conv_stack(self.convs, self.conv_post, x)


class MultiPeriodDiscriminator(nn.Module):
    """One scale discriminator and period discriminators 2, 3, 5, 7, 11 (the fork's `net_d`).
    `width` < 1 scales the channels down (tests, CPU smoke runs); 1 is the fork's layout."""

    def __init__(self, use_spectral_norm: bool = False, periods: tuple[int, ...] = (2, 3, 5, 7, 11),
                 width: float = 1.0):
        super().__init__()
        self.discriminators = nn.ModuleList([DiscriminatorS(use_spectral_norm, width)] + [
            DiscriminatorP(p, use_spectral_norm=use_spectral_norm, width=width) for p in periods])

    def forward(self, y: Tensor, y_hat: Tensor) -> tuple[list[Tensor], list[Tensor], list, list]:
        real, fake, fmap_r, fmap_g = [], [], [], []
        for d in self.discriminators:
            r, fr = d(y)
            g, fg = d(y_hat)
            real.append(r), fake.append(g), fmap_r.append(fr), fmap_g.append(fg)
        return real, fake, fmap_r, fmap_g


# ---------------------------------------------------------------- spectrograms (as the fork's mel_processing)


def spectrogram(y: Tensor, data: dict) -> Tensor:
    """Linear magnitude spectrogram [..., n_fft/2+1, frames]: reflect padding of (n_fft-hop)/2, no centring."""
    n_fft, hop, win = data["filter_length"], data["hop_length"], data["win_length"]
    pad = (n_fft - hop) // 2
    y = F.pad(y.unsqueeze(-2), (pad, pad), mode="reflect").squeeze(-2)
    shape = y.shape[:-1]
    spec = torch.stft(y.reshape(-1, y.shape[-1]), n_fft, hop, win, torch.hann_window(win, device=y.device,
                      dtype=y.dtype), center=False, return_complex=True)
    spec = torch.sqrt(spec.real ** 2 + spec.imag ** 2 + 1e-6)
    return spec.reshape(*shape, *spec.shape[-2:])


_MEL_BASIS: dict[tuple, Tensor] = {}  # a cache of constant filter banks, not state


def spec_to_mel(spec: Tensor, data: dict) -> Tensor:
    """Log mel spectrogram (librosa's Slaney filters, natural log, floor 1e-5) from a linear one."""
    key = (data["sampling_rate"], data["filter_length"], data["n_mel_channels"], data["mel_fmin"], data["mel_fmax"],
           spec.dtype, str(spec.device))
    if key not in _MEL_BASIS:
        from librosa.filters import mel

        basis = mel(sr=key[0], n_fft=key[1], n_mels=key[2], fmin=key[3], fmax=key[4])
        _MEL_BASIS[key] = torch.from_numpy(basis).to(spec.device, spec.dtype)
    return torch.log(torch.clamp(_MEL_BASIS[key] @ spec, min=1e-5))


def mel_spectrogram(y: Tensor, data: dict) -> Tensor:
    return spec_to_mel(spectrogram(y, data), data)


# ---------------------------------------------------------------- losses (VITS)


def discriminator_loss(real: list[Tensor], fake: list[Tensor]) -> Tensor:
    """Least-squares GAN: real outputs to 1, generated to 0."""
    return sum(torch.mean((1 - r.float()) ** 2) + torch.mean(g.float() ** 2) for r, g in zip(real, fake))


def generator_loss(fake: list[Tensor]) -> Tensor:
    return sum(torch.mean((1 - g.float()) ** 2) for g in fake)


def feature_loss(fmap_r: list[list[Tensor]], fmap_g: list[list[Tensor]]) -> Tensor:
    """L1 between the discriminators' feature maps of real and generated audio (x2)."""
    return 2 * sum(torch.mean(torch.abs(r.float().detach() - g.float()))
                   for dr, dg in zip(fmap_r, fmap_g) for r, g in zip(dr, dg))


def kl_loss(z_p: Tensor, logs_q: Tensor, m_p: Tensor, logs_p: Tensor, z_mask: Tensor) -> Tensor:
    """KL(posterior || prior) per masked frame, with z_p the flow of a posterior sample."""
    z_p, logs_q, m_p, logs_p, z_mask = (t.float() for t in (z_p, logs_q, m_p, logs_p, z_mask))
    kl = logs_p - logs_q - 0.5 + 0.5 * (z_p - m_p) ** 2 * torch.exp(-2.0 * logs_p)
    return torch.sum(kl * z_mask) / torch.sum(z_mask)


# ---------------------------------------------------------------- configuration

_TRAIN = {"log_interval": 100, "eval_interval": 200, "seed": 1234, "epochs": 10000, "learning_rate": 0.0001,
          "betas": [0.8, 0.99], "eps": 1e-9, "batch_size": 16, "fp16_run": False, "bf16_run": False,
          "lr_decay": 0.999875, "segment_size": 10240, "init_lr_ratio": 1, "warmup_epochs": 0, "c_mel": 45,
          "c_kl": 1.0, "use_sr": True, "max_speclen": 512, "port": "8001", "keep_ckpts": 3, "num_workers": 4,
          "log_version": 0, "ckpt_name_by_step": True, "accumulate_grad_batches": 1}
_DATA = {"training_files": "filelists/44k/train.txt", "validation_files": "filelists/44k/val.txt",
         "max_wav_value": 32768.0, "sampling_rate": 44100, "filter_length": 2048, "hop_length": 512,
         "win_length": 2048, "n_mel_channels": 80, "mel_fmin": 0.0, "mel_fmax": 22050}
_MODEL = {"inter_channels": 192, "hidden_channels": 192, "filter_channels": 768, "n_heads": 2, "n_layers": 6,
          "kernel_size": 3, "p_dropout": 0.1, "resblock": "1", "resblock_kernel_sizes": [3, 7, 11],
          "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5], [1, 3, 5]], "upsample_rates": [8, 8, 2, 2, 2],
          "upsample_initial_channel": 512, "upsample_kernel_sizes": [16, 16, 4, 4, 4], "n_layers_q": 3,
          "use_spectral_norm": False, "gin_channels": 256, "ssl_dim": 768, "n_speakers": 200, "type_": "hifi-gan"}
# The fork's config templates (preprocessing/config_templates): 768-dim ContentVec layer 12, and the
# original so-vits-svc 4.0 layout (256 dims: layer 9 through final_proj).
TEMPLATES = {
    "so-vits-svc-4.0v1": {"train": _TRAIN, "data": {**_DATA, "contentvec_final_proj": False}, "model": _MODEL,
                          "spk": {}},
    "legacy": {"train": {**_TRAIN, "log_interval": 200, "eval_interval": 800}, "data": _DATA,
               "model": {**_MODEL, "ssl_dim": 256}, "spk": {}},
}
TEMPLATES["so-vits-svc-4.0v1-legacy"] = TEMPLATES["legacy"]


@dataclass
class TrainConfig:
    steps: int = 10000  # train until this global step (a resumed run continues to it)
    batch_size: int | None = None  # None: the template's (16)
    segment_size: int | None = None  # samples the decoder sees per clip; None: template's (10240)
    learning_rate: float | None = None  # None: template's (1e-4)
    log_interval: int = 100  # steps between progress lines / TensorBoard scalars
    eval_interval: int = 1000  # steps between audio samples
    checkpoint_interval: int = 1000  # steps between G_/D_ checkpoints (also written at the end)
    keep_ckpts: int = 3  # checkpoint pairs kept (0: all); G_0/D_0 are never removed
    seed: int = 1234
    device: str = "auto"  # "auto" (CUDA if there is one), "cpu", "cuda", "cuda:1"
    amp: str = "auto"  # on CUDA: "auto" (bf16 where supported, else fp16), "bf16", "fp16", "off"; CPU: always off
    template: str | dict = "so-vits-svc-4.0v1"  # "so-vits-svc-4.0v1", "legacy", or a full config dict
    base_g: str | Path | None = None  # G_0.pth to fine-tune from (the normal case); None: from scratch
    base_d: str | Path | None = None
    f0_method: str = "dio"
    content: str | Path = "contentvec"  # ContentVec folder/file or registry name (see voice.content)
    speaker: str | None = None  # name in config.json's "spk"; default: the dataset folder's name
    num_workers: int | None = None  # DataLoader workers; None: 0 on CPU, 4 on CUDA
    peak_normalize: bool = True  # scale each clip to peak 1, as the fork's pre-resample does
    eval_seconds: float = 4.0  # length of the audio samples written at eval
    extra: dict[str, Any] = field(default_factory=dict)  # overrides merged into config.json's "train"


def make_config(cfg: TrainConfig, speaker: str) -> dict:
    """The fork's config.json for this run: template + TrainConfig overrides + speaker."""
    if isinstance(cfg.template, dict):
        config = copy.deepcopy(cfg.template)
    elif cfg.template in TEMPLATES:
        config = copy.deepcopy(TEMPLATES[cfg.template])
    else:
        raise ReenactError(f"unknown template {cfg.template!r}; choose so-vits-svc-4.0v1 or legacy")
    if config["model"].get("type_", "hifi-gan") != "hifi-gan":
        raise ReenactError(f"decoder type {config['model']['type_']!r} is not supported (only hifi-gan)")
    train = config["train"]
    for key in ("batch_size", "segment_size", "learning_rate"):
        if getattr(cfg, key) is not None:
            train[key] = getattr(cfg, key)
    train.update(seed=cfg.seed, log_interval=cfg.log_interval, eval_interval=cfg.eval_interval,
                 keep_ckpts=cfg.keep_ckpts, ckpt_name_by_step=True, **cfg.extra)
    if train["segment_size"] % config["data"]["hop_length"]:
        raise ReenactError(f"segment_size {train['segment_size']} is not a multiple of the hop "
                           f"{config['data']['hop_length']}")
    config["spk"] = {speaker: 0}
    return config


# ---------------------------------------------------------------- data


def clip_features(path: Path, config: dict, encoder: Any, f0_method: str, peak_normalize: bool = True) -> dict | None:
    """Training features of one clip, frame-aligned at the model's hop (as the fork's pre-hubert writes);
    None for a clip under 0.3 s."""
    import soundfile as sf

    data = config["data"]
    try:
        x, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except (RuntimeError, OSError) as exc:
        raise ReenactError(f"cannot read audio ({exc})", path) from exc
    x = S.resample(x.mean(1), sr, data["sampling_rate"]).astype(np.float32)
    if len(x) < 0.3 * data["sampling_rate"]:  # as the fork: too short for the content encoder
        return None
    if peak_normalize and np.abs(x).max() > 0:
        x = x / np.abs(x).max()
    c, f0, uv = C.get_features(x, data["sampling_rate"], data["hop_length"], encoder, f0_method)
    audio = torch.from_numpy(x).float()[None]
    spec = spectrogram(audio, data)[0]
    mel = spec_to_mel(spec, data)
    n = min(spec.shape[1], len(f0), c.shape[1])
    return {"spec": spec[:, :n], "mel_spec": mel[:, :n], "f0": torch.as_tensor(f0[:n]).float(),
            "uv": torch.as_tensor(uv[:n]).float(), "content": c[:, :n].float().cpu(), "audio": audio}


def preprocess(clips: list[Path], cache: Path, config: dict, encoder: Any, f0_method: str,
               peak_normalize: bool = True, rank: int = 0, world: int = 1, content: str = "") -> list[Path]:
    """Cache every clip's features in `cache` (this rank's share; clips already done are skipped).
    The cache is cleared when the data settings, content encoder (`content` names it) or F0 method change."""
    cache.mkdir(parents=True, exist_ok=True)
    stamp = json.dumps({"data": config["data"], "ssl_dim": config["model"]["ssl_dim"], "f0": f0_method,
                        "peak_normalize": peak_normalize, "content": content}, sort_keys=True)
    stamp_path = cache / "settings.json"
    if rank == 0 and (not stamp_path.is_file() or stamp_path.read_text() != stamp):
        for old in cache.glob("*.pt"):
            old.unlink()
        write_text(stamp_path, stamp)
    _barrier()
    out = [cache / f"{i:05d}_{p.stem}.pt" for i, p in enumerate(clips)]
    todo = [(p, o) for p, o in list(zip(clips, out))[rank::world] if not o.is_file()]
    t0 = time.monotonic()
    for n, (clip, path) in enumerate(todo, 1):
        features = clip_features(clip, config, encoder, f0_method, peak_normalize)
        if features is None:
            log.info("%s: skipped (shorter than 0.3 s)", clip)
        else:
            with atomic_write(path) as tmp:
                torch.save(features, tmp)
        if n % 20 == 0 or n == len(todo):
            log.info("features: %d/%d clips (%.1f s)", n, len(todo), time.monotonic() - t0)
    _barrier()
    out = [p for p in out if p.is_file()]
    if not out:
        raise ReenactError("no clip is long enough to train on (0.3 s at least)", cache)
    return out


class ClipDataset(torch.utils.data.Dataset):
    """Cached clips; a clip longer than `max_frames` is cropped at a place fixed by (seed, epoch, index)."""

    def __init__(self, paths: list[Path], hop: int, speaker: int = 0, seed: int = 0, max_frames: int = 800):
        self.paths, self.hop, self.speaker, self.seed, self.max_frames = paths, hop, speaker, seed, max_frames

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Tensor]:
        index, epoch = key
        data = torch.load(self.paths[index], map_location="cpu", weights_only=True)
        n = data["spec"].shape[1]
        if n > self.max_frames:  # as the fork: a random window of max_frames - 10 frames
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch * 10_007 + index)
            a = int(torch.randint(0, n - self.max_frames + 1, (1,), generator=g))
            b = a + self.max_frames - 10
            hop = self.hop
            data = {k: v[:, a * hop:b * hop] if k == "audio" else v[..., a:b] for k, v in data.items()}
        data["spk"] = torch.tensor(self.speaker)
        return data


def collate(batch: list[dict[str, Tensor]]) -> tuple[Tensor, ...]:
    """Longest first, zero-padded: (content, f0, spec, mel, audio, speaker, lengths, uv), as the fork."""
    batch = sorted(batch, key=lambda b: b["spec"].shape[1], reverse=True)

    def pad(key: str) -> Tensor:
        longest = max(b[key].shape[-1] for b in batch)
        return torch.stack([F.pad(b[key], (0, longest - b[key].shape[-1])) for b in batch])

    lengths = torch.tensor([b["spec"].shape[1] for b in batch])
    spk = torch.stack([b["spk"] for b in batch])[:, None]
    return pad("content"), pad("f0"), pad("spec"), pad("mel_spec"), pad("audio"), spk, lengths, pad("uv")


# ---------------------------------------------------------------- training


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def checkpoint_steps(model_dir: Path) -> list[int]:
    """Steps (> 0) for which both G_{step}.pth and D_{step}.pth exist, oldest first."""
    def steps(prefix: str) -> set[int]:
        return {int(m.group(1)) for p in Path(model_dir).glob(f"{prefix}_*.pth")
                if (m := re.fullmatch(rf"{prefix}_(\d+)\.pth", p.name))}
    return sorted(s for s in steps("G") & steps("D") if s > 0)


def clean_checkpoints(model_dir: Path, keep: int) -> None:
    """Keep the newest `keep` checkpoint pairs (all when keep <= 0); G_0/D_0 (base models) stay."""
    if keep <= 0:
        return
    for prefix in "GD":
        found = sorted((int(m.group(1)), p) for p in Path(model_dir).glob(f"{prefix}_*.pth")
                       if (m := re.fullmatch(rf"{prefix}_(\d+)\.pth", p.name)) and int(m.group(1)) > 0)
        for _, path in found[:-keep]:
            log.info("removing %s", path)
            path.unlink(missing_ok=True)


def _base_shapes(path: Path) -> dict[str, tuple]:
    try:  # numpy scalars allowed as in sovits.load_checkpoint (older checkpoints hold them)
        with torch.serialization.safe_globals(sovits._numpy_globals()):
            sd = torch.load(path, map_location="cpu", weights_only=True, mmap=True)["model"]
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's to fix
        raise ReenactError(f"cannot read base model ({str(exc).splitlines()[0]})", path) from exc
    return {k: tuple(v.shape) for k, v in sd.items() if k in ("emb_g.weight", "pre.weight")}


def _amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    if device.type != "cuda" or amp == "off":
        return None
    if amp == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]


def _setup_distributed(cfg: TrainConfig) -> tuple[int, int, torch.device, bool]:
    """(rank, world size, device, whether we started the process group). torchrun sets the env vars."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    name = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and world > 1:
        name = f"cuda:{int(os.environ.get('LOCAL_RANK', rank))}"
    device = torch.device(name)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    started = False
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        started = True
    return rank, world, device, started


def _rng_state(device: torch.device) -> dict[str, Tensor]:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Tensor], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def train_step(net_g: nn.Module, net_d: nn.Module, d_raw: nn.Module, opt_g: torch.optim.Optimizer,
               opt_d: torch.optim.Optimizer, scaler: torch.amp.GradScaler, batch: tuple[Tensor, ...],
               config: dict, amp: torch.dtype | None) -> dict[str, float]:
    """One generator and one discriminator update, as the fork's `training_step`. Returns the losses."""
    train, data = config["train"], config["data"]
    hop, seg = data["hop_length"], train["segment_size"]
    c, f0, spec, mel, y, g, lengths, uv = batch
    device = c.device
    autocast = torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None)

    d_raw.requires_grad_(False)  # generator step: D only passes gradients through
    with autocast:
        y_hat, _, ids, z_mask, (_, z_p, m_p, logs_p, _, logs_q), pred_lf0, _, lf0 = net_g(
            c, f0, uv, spec, g=g, c_lengths=lengths, spec_lengths=lengths)
    y_hat_mel = mel_spectrogram(y_hat.squeeze(1).float(), data)
    y_mel = sovits.slice_segments(mel, ids, seg // hop)[..., :y_hat_mel.shape[-1]]
    y = sovits.slice_segments(y, ids * hop, seg)[..., :y_hat.shape[-1]]
    with autocast:
        _, fake, fmap_r, fmap_g = d_raw(y, y_hat)
    loss_mel = F.l1_loss(y_mel, y_hat_mel) * train["c_mel"]
    loss_kl = kl_loss(z_p, logs_q, m_p, logs_p, z_mask) * train["c_kl"]
    loss_fm = feature_loss(fmap_r, fmap_g)
    loss_adv = generator_loss(fake)
    loss_lf0 = F.mse_loss(pred_lf0.float(), lf0.float())
    loss_g = loss_adv + loss_fm + loss_mel + loss_kl + loss_lf0
    opt_g.zero_grad(set_to_none=True)
    scaler.scale(loss_g).backward()
    scaler.unscale_(opt_g)
    grad_g = nn.utils.clip_grad_norm_(net_g.parameters(), float("inf"))
    scaler.step(opt_g)
    d_raw.requires_grad_(True)

    with autocast:
        real, fake, _, _ = net_d(y, y_hat.detach())
    loss_d = discriminator_loss(real, fake)
    opt_d.zero_grad(set_to_none=True)
    scaler.scale(loss_d).backward()
    scaler.unscale_(opt_d)
    grad_d = nn.utils.clip_grad_norm_(d_raw.parameters(), float("inf"))
    scaler.step(opt_d)
    scaler.update()
    return {"g/total": loss_g.item(), "g/mel": loss_mel.item(), "g/kl": loss_kl.item(), "g/fm": loss_fm.item(),
            "g/adv": loss_adv.item(), "g/lf0": loss_lf0.item(), "d/total": loss_d.item(),
            "grad_norm_g": float(grad_g), "grad_norm_d": float(grad_d)}


@torch.no_grad()
def evaluate(net_g: nn.Module, paths: list[Path], config: dict, device: torch.device, seconds: float,
             seed: int) -> tuple[float, list[tuple[Tensor, Tensor]]]:
    """Mel L1 of the generator's output (`infer`, the conversion path) on clips; (mel L1, [(generated, real)])."""
    data = config["data"]
    frames = max(1, int(seconds * data["sampling_rate"] / data["hop_length"]))
    was_training = net_g.training
    net_g.eval()
    errors, samples = [], []
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)  # eval noise neither depends on nor disturbs the training RNG
        for path in paths:
            d = torch.load(path, map_location="cpu", weights_only=True)
            n = min(frames, d["spec"].shape[1])
            c, f0, uv = (d[k][..., :n][None].to(device) for k in ("content", "f0", "uv"))
            y_hat = net_g.infer(c, f0, uv, g=torch.zeros(1, 1, dtype=torch.long, device=device))[0, 0].float()
            mel = mel_spectrogram(y_hat, data)
            m = min(mel.shape[-1], n)
            errors.append(F.l1_loss(mel[:, :m], d["mel_spec"][:, :m].to(device)).item())
            samples.append((y_hat.clamp(-1, 1).cpu(), d["audio"][0, :n * data["hop_length"]]))
    net_g.train(was_training)
    return float(np.mean(errors)), samples


def train_sovits(dataset_dir: str | Path, model_dir: str | Path, config: TrainConfig | None = None,
                 encoder: Any = None) -> Path:
    """Train a so-vits-svc 4.x model on a reenact dataset folder; returns the newest G_{step}.pth.

    Fine-tunes from `config.base_g`/`base_d` (or G_0.pth/D_0.pth in `model_dir`) when given, else trains
    from scratch. Resumes from the newest checkpoint in `model_dir`. `encoder`: a ready
    `voice.content.ContentEncoder` (default: load `config.content`)."""
    cfg = config or TrainConfig()
    dataset_dir, model_dir = Path(dataset_dir), Path(model_dir)
    if model_dir.exists() and not model_dir.is_dir():
        raise ReenactError("model path exists and is not a folder", model_dir)
    clips = dataset_clips(dataset_dir, need_manifest=True)
    rank, world, device, started = _setup_distributed(cfg)
    try:
        # ---- configuration: template + overrides, or the one this folder was trained with
        hps = make_config(cfg, cfg.speaker or dataset_dir.resolve().name)
        resume_steps = checkpoint_steps(model_dir)
        base_g, base_d = (Path(given) if given else (model_dir / name if (model_dir / name).is_file() else None)
                          for given, name in ((cfg.base_g, "G_0.pth"), (cfg.base_d, "D_0.pth")))
        if resume_steps and (model_dir / "config.json").is_file():
            stored = sovits.load_config(model_dir / "config.json")
            for key in ("model", "data", "spk"):
                if stored.get(key) != hps.get(key):
                    log.info("resuming: using the stored config.json's %r section", key)
                hps[key] = stored[key]
        elif base_g is not None:
            shapes = _base_shapes(base_g)
            ssl_dim = shapes.get("pre.weight", (0, 0))[1]
            if ssl_dim != hps["model"]["ssl_dim"]:
                raise ReenactError(f"the base model takes {ssl_dim}-dim content features, the template "
                                   f"{hps['model']['ssl_dim']} (use template 'legacy' for 256)", base_g)
            hps["model"]["n_speakers"] = shapes.get("emb_g.weight", (hps["model"]["n_speakers"],))[0]
        train = hps["train"]
        amp = _amp_dtype(cfg.amp, device)
        train["bf16_run"], train["fp16_run"] = amp == torch.bfloat16, amp == torch.float16

        # ---- features
        if encoder is None:
            encoder = C.ContentEncoder.load(cfg.content, str(device),
                                          legacy=bool(hps["data"].get("contentvec_final_proj", True)))
        if encoder.dim != hps["model"]["ssl_dim"]:
            raise ReenactError(f"the content encoder gives {encoder.dim}-dim features; the model takes "
                               f"{hps['model']['ssl_dim']}", Path(str(cfg.content)))
        paths = preprocess(clips, model_dir / "cache", hps, encoder, cfg.f0_method, cfg.peak_normalize, rank, world,
                           str(cfg.content))
        del encoder
        f0 = np.concatenate([(lambda d: d["f0"][d["uv"] > 0].numpy())(torch.load(p, weights_only=True, mmap=True))
                             for p in paths])
        hps["reenact"] = {"content": str(cfg.content), "f0_method": cfg.f0_method, "dataset": str(dataset_dir),
                          "f0": {"median_hz": float(np.median(f0)) if len(f0) else None,
                                 "p5_hz": float(np.percentile(f0, 5)) if len(f0) else None,
                                 "p95_hz": float(np.percentile(f0, 95)) if len(f0) else None}}
        if rank == 0:
            write_text(model_dir / "config.json", json.dumps(hps, indent=2))
        perm = np.random.RandomState(1234).permutation(len(paths))
        val = [paths[i] for i in perm[:2]] if len(paths) >= 10 else []  # the fork holds out 2 clips
        train_paths = [paths[i] for i in sorted(perm[len(val):])]

        # ---- models, optimizers, state
        torch.manual_seed(cfg.seed)
        g_raw = sovits.build_generator(hps).to(device)
        d_raw = MultiPeriodDiscriminator(hps["model"].get("use_spectral_norm", False),
                                         width=train.get("disc_width", 1.0)).to(device)
        opt_g = torch.optim.AdamW(g_raw.parameters(), train["learning_rate"], betas=train["betas"], eps=train["eps"])
        opt_d = torch.optim.AdamW(d_raw.parameters(), train["learning_rate"], betas=train["betas"], eps=train["eps"])
        step = epoch = pos = 0
        state = None
        if resume_steps:
            state_path = model_dir / "train_state.pt"
            state = torch.load(state_path, map_location="cpu", weights_only=True) if state_path.is_file() else None
            step = state["step"] if state and state["step"] in resume_steps else resume_steps[-1]
            if state is None or state["step"] != step:
                log.warning("%s: no saved state for step %d: optimizers come from the checkpoints, but the "
                            "position in the epoch and the random state start afresh", model_dir, step)
                state = None
            _, _, _, epoch = sovits.load_checkpoint(model_dir / f"G_{step}.pth", g_raw, opt_g)
            sovits.load_checkpoint(model_dir / f"D_{step}.pth", d_raw, opt_d)
            log.info("resuming from step %d (epoch %d)", step, epoch)
        elif base_g is not None:
            sovits.load_checkpoint(base_g, g_raw, for_inference=True)  # a shared export may lack enc_q: it learns anew
            if base_d is not None:
                sovits.load_checkpoint(base_d, d_raw)
            log.info("fine-tuning from %s%s", base_g, f" and {base_d}" if base_d else " (discriminator from scratch)")
        else:
            log.info("training from scratch (no base model)")
        sched_g = torch.optim.lr_scheduler.ExponentialLR(opt_g, train["lr_decay"])
        sched_d = torch.optim.lr_scheduler.ExponentialLR(opt_d, train["lr_decay"])
        scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)
        torch.manual_seed(cfg.seed + rank)
        bs = int(train["batch_size"])
        if state is not None:
            epoch, pos = state["epoch"], state["pos"]
            if (state["batch_size"], state["world"]) != (bs, world):
                log.warning("batch size or process count changed since step %d: the epoch starts over", step)
                pos = 0
            sched_g.load_state_dict(state["sched_g"]), sched_d.load_state_dict(state["sched_d"])
            scaler.load_state_dict(state["scaler"])
            if rank < len(state["rng"]):
                _set_rng_state(state["rng"][rank], device)
        elif resume_steps:
            sched_g.last_epoch = sched_d.last_epoch = epoch

        net_g, net_d = g_raw, d_raw
        if world > 1:
            ids = [device.index] if device.type == "cuda" else None
            net_g = nn.parallel.DistributedDataParallel(g_raw, device_ids=ids)
            net_d = nn.parallel.DistributedDataParallel(d_raw, device_ids=ids)
        dataset = ClipDataset(train_paths, hps["data"]["hop_length"], 0, cfg.seed)
        sampler = torch.utils.data.DistributedSampler(range(len(train_paths)), world, rank, shuffle=True,
                                                      seed=cfg.seed)
        writer = None
        if rank == 0:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(model_dir / "logs"), purge_step=step or None)

        def save() -> None:
            rng = [None] * world
            if world > 1:
                dist.all_gather_object(rng, _rng_state(device))
            else:
                rng = [_rng_state(device)]
            if rank != 0:
                return
            lr0 = train["learning_rate"]
            sovits.save_checkpoint(g_raw, opt_g, lr0, epoch, model_dir / f"G_{step}.pth")
            sovits.save_checkpoint(d_raw, opt_d, lr0, epoch, model_dir / f"D_{step}.pth")
            with atomic_write(model_dir / "train_state.pt") as tmp:
                torch.save({"step": step, "epoch": epoch, "pos": pos, "sched_g": sched_g.state_dict(),
                            "sched_d": sched_d.state_dict(), "scaler": scaler.state_dict(), "rng": rng,
                            "world": world, "batch_size": bs}, tmp)
            clean_checkpoints(model_dir, cfg.keep_ckpts)
            log.info("saved G_%d.pth / D_%d.pth", step, step)

        log.info("training %d clips (%d held out) on %s x%d, batch %d, %s, to step %d", len(train_paths), len(val),
                 device, world, bs, f"AMP {amp}" if amp else "fp32", cfg.steps)
        net_g.train(), net_d.train()
        t0, n0 = time.monotonic(), step
        per_epoch = math.ceil(len(sampler) / bs)

        def batches(epoch: int, pos: int):  # the epochs' shuffled batches from (epoch, pos) on, endlessly
            while True:
                sampler.set_epoch(epoch)
                order = list(sampler)
                for k in range(pos * bs, len(order), bs):
                    yield [(i, epoch) for i in order[k:k + bs]]
                epoch, pos = epoch + 1, 0

        workers = cfg.num_workers if cfg.num_workers is not None else (min(4, os.cpu_count() or 1)
                                                                       if device.type == "cuda" else 0)
        loader = torch.utils.data.DataLoader(dataset, batch_sampler=batches(epoch, pos), collate_fn=collate,
                                             num_workers=workers, pin_memory=device.type == "cuda",
                                             generator=torch.Generator().manual_seed(cfg.seed + step))
        if step < cfg.steps:
            for batch in loader:
                batch = tuple(t.to(device, non_blocking=True) for t in batch)
                losses = train_step(net_g, net_d, d_raw, opt_g, opt_d, scaler, batch, hps, amp)
                step, pos = step + 1, pos + 1
                if pos == per_epoch:  # end of the epoch: decay the learning rate, as the fork
                    sched_g.step(), sched_d.step()
                    epoch, pos = epoch + 1, 0
                if writer and (step % cfg.log_interval == 0 or step == cfg.steps):
                    rate = (step - n0) / (time.monotonic() - t0)
                    lr = opt_g.param_groups[0]["lr"]
                    for k, v in losses.items():
                        writer.add_scalar(f"loss/{k}" if "/" in k else k, v, step)
                    writer.add_scalar("lr", lr, step)
                    writer.add_scalar("steps_per_second", rate, step)
                    log.info("step %d/%d epoch %d | g %.3f (mel %.3f kl %.3f fm %.3f adv %.3f lf0 %.4f) | d %.3f | "
                             "lr %.3g | %.2f steps/s", step, cfg.steps, epoch, losses["g/total"], losses["g/mel"],
                             losses["g/kl"], losses["g/fm"], losses["g/adv"], losses["g/lf0"], losses["d/total"],
                             lr, rate)
                    t0, n0 = time.monotonic(), step
                if writer and step % cfg.eval_interval == 0:
                    err, samples = evaluate(g_raw, val or train_paths[:1], hps, device, cfg.eval_seconds, cfg.seed)
                    writer.add_scalar("val/mel_l1", err, step)
                    sr = hps["data"]["sampling_rate"]
                    for i, (gen, real) in enumerate(samples):
                        writer.add_audio(f"gen/audio_{i}", gen[None], step, sample_rate=sr)
                        writer.add_audio(f"gt/audio_{i}", real[None], step, sample_rate=sr)
                if step % cfg.checkpoint_interval == 0 or step >= cfg.steps:
                    save()
                if step >= cfg.steps:
                    break
        if writer:
            writer.close()
        _barrier()  # every rank leaves once rank 0 has written
        return model_dir / f"G_{step}.pth"
    finally:
        if started:
            dist.destroy_process_group()
