"""Conversion with a so-vits-svc 4.x model: a model folder (config.json + G_*.pth) in, speech out.

Inputs are converted in chunks of about `chunk_seconds` at most (anything over 4 s in an even
number of chunks), each cut in a pause: within a quarter chunk of its ideal, equal-length position,
the frame nearest that position among those within 6 dB of the quietest (so the chunks stay nearly
equal and the cores finish together). Each chunk's content and F0 are encoded with `context_seconds`
of audio on both sides, its waveform decoded with `decoder_context_seconds` (the decoder's reach is
short), and the chunks are joined by a short crossfade inside the pause. On a CPU the chunks are converted at once,
one per core, each with its own seeded noise generator: with these long, few-channel convolutions
that is faster than one chunk at a time on all cores (see docs/sovits.md), and the output does not
depend on the core count. Nothing is zeroed: pauses, breaths and room tone go through the model
like speech, so they keep the converted level. (so-vits-svc-fork writes exact zeros between the
speech it finds.)

F0: the driver's F0 is shifted by `transpose` semitones, or with ``"auto"`` from the driver's
median F0 to the subject's (recorded in config.json by `reenact voice train --backend sovits`).
A model without those statistics (a community model) uses its F0 decoder's prediction instead.
"""

from __future__ import annotations

import logging
import math
import re
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from reenact.errors import ReenactError
from reenact.threads import torch_threads
from reenact.voice import signal as S
from reenact.voice.sovits import content as C
from reenact.voice.sovits import model as sovits

log = logging.getLogger(__name__)


@dataclass
class ConvertConfig:
    transpose: str | float = "auto"  # "auto" or semitones
    speaker: str | int | None = None  # name or id in config.json's "spk"; default: the first
    f0_method: str = "dio"  # dio, harvest, parselmouth, crepe or crepe-tiny (content.F0_METHODS)
    predict_f0: bool | None = None  # the F0 decoder's prediction; None: only when "auto" has no statistics
    noise_scale: float = 0.4
    chunk_seconds: float = 10.0  # longest chunk; inputs over 4 s are cut into an even number of chunks
    split_for_cores: bool = True  # cut inputs over 4 s into an even number of chunks, so cores share them
    workers: int | None = None  # CPU: chunks converted at once (default: torch's thread count)
    batch_size: int | None = None  # chunks per batch (padded; c_lengths masks the encoders); default: 8 on a
    # GPU, 1 on a CPU. The decoder is unmasked, so the last ~0.1 s of a padded chunk's context differs slightly.
    context_seconds: float = 0.5  # audio on each side of a chunk seen by the content encoder and enc_p
    decoder_context_seconds: float = 0.2  # of that, decoded to audio (the decoder reaches ~10 frames, 0.12 s)
    crossfade_seconds: float = 0.04
    seed: int = 0


def find_generator(path: Path) -> tuple[Path, Path]:
    """(G_*.pth, config.json) for a model folder or a G file with config.json beside it."""
    path = Path(path).expanduser()
    folder = path if path.is_dir() else path.parent
    config = folder / "config.json"
    if path.is_dir():
        steps = [(int(m.group(1)), p) for p in path.glob("G_*.pth") if (m := re.fullmatch(r"G_(\d+)\.pth", p.name))]
        if not steps:
            raise ReenactError("no G_*.pth generator checkpoint in the model folder", path)
        path = max(steps)[1]
    elif not path.is_file():
        raise ReenactError("model not found (give a folder with config.json and G_*.pth, or a G_*.pth file)", path)
    if not config.is_file():
        raise ReenactError("config.json not found beside the generator checkpoint", config)
    return path, config


def pick_device(device: str | None) -> str:
    return device or ("cuda" if torch.cuda.is_available() else "cpu")


class SovitsVoice:
    """A loaded so-vits-svc model with its content encoder."""

    def __init__(self, config: dict, net_g: torch.nn.Module, encoder: C.ContentEncoder, device: str,
                 path: Path | None = None):
        self.config, self.net_g, self.encoder, self.device, self.path = config, net_g, encoder, device, path
        self.sample_rate = int(config["data"]["sampling_rate"])
        self.hop = int(config["data"]["hop_length"])
        self.speakers: dict[str, int] = dict(config.get("spk") or {}) or {"speaker0": 0}
        self.stats: dict = (config.get("reenact") or {}).get("f0", {})

    @classmethod
    def load(cls, path: str | Path, content: str | Path | C.ContentEncoder | None = None,
             device: str | None = None, dtype: str = "float32") -> "SovitsVoice":
        """Load a model folder (or G_*.pth). `content`: ContentVec folder/file/'contentvec' or an encoder;
        default: the one recorded in config.json by training, else the registry's 'contentvec'.
        `dtype` "bfloat16" runs the waveform decoder in bfloat16: about twice as fast where the CPU
        has AVX512-BF16/AMX (or on a GPU), 0.5% RMS from the float32 audio; float32 (default) is the
        reference, equal to so-vits-svc-fork's output to float tolerance."""
        g_path, config_path = find_generator(Path(path))
        config = sovits.load_config(config_path)
        device = pick_device(device)
        net_g = sovits.build_generator(config, config_path)
        sovits.load_checkpoint(g_path, net_g)
        net_g = net_g.remove_weight_norm().eval().to(device)
        if dtype not in ("float32", "bfloat16"):
            raise ReenactError(f"dtype must be float32 or bfloat16, not {dtype!r}")
        if dtype == "bfloat16":
            if device == "cpu" and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
                log.warning("this CPU has no fast bfloat16: the decoder will be slower, not faster")
            net_g.set_decoder_dtype(torch.bfloat16)
        legacy = bool(config["data"].get("contentvec_final_proj", True))  # absent means legacy, as in the fork
        if not isinstance(content, C.ContentEncoder):
            spec = content or (config.get("reenact") or {}).get("content") or "contentvec"
            content = C.ContentEncoder.load(spec, device, legacy=legacy)
        if content.dim != int(config["model"]["ssl_dim"]):
            raise ReenactError(f"the content encoder gives {content.dim}-dim features; the model needs "
                               f"{config['model']['ssl_dim']}", g_path)
        log.info("loaded %s (%s, %d Hz) on %s", g_path, config["model"].get("type_", "hifi-gan"),
                 int(config["data"]["sampling_rate"]), device)
        return cls(config, net_g, content, device, g_path)

    def speaker_id(self, speaker: str | int | None) -> int:
        if speaker is None:
            return min(self.speakers.values())
        if isinstance(speaker, int) or str(speaker).isdigit():
            sid = int(speaker)
            if sid not in self.speakers.values():
                raise ReenactError(f"speaker id {sid} is not in the model; speakers: {self.speakers}")
            return sid
        if speaker not in self.speakers:
            raise ReenactError(f"speaker {speaker!r} is not in the model; speakers: {', '.join(self.speakers)}")
        return self.speakers[speaker]

    def shift(self, f0: np.ndarray, uv: np.ndarray, cfg: ConvertConfig) -> tuple[float, bool]:
        """Semitones to shift the driver's F0 by, and whether to use the F0 decoder instead."""
        if cfg.transpose != "auto":
            return float(cfg.transpose), bool(cfg.predict_f0)
        target = self.stats.get("median_hz")
        if target and uv.any() and not cfg.predict_f0:
            return float(12 * np.log2(target / np.median(f0[uv > 0]))), False
        return 0.0, cfg.predict_f0 is not False

    def convert(self, x: np.ndarray, cfg: ConvertConfig | None = None,
                progress: Callable[[int, int], None] | None = None) -> np.ndarray:
        """Mono audio at `sample_rate` -> converted audio of the same length."""
        cfg = cfg or ConvertConfig()
        hop, sr = self.hop, self.sample_rate
        n_in = len(x)
        x = np.asarray(x, dtype=np.float32)
        x = np.pad(x, (0, max(sr // 2 - len(x), 0)))  # very short input: pad to 0.5 s, cut again at the end
        x = np.pad(x, (0, (-len(x)) % hop))
        frames = len(x) // hop
        chunks = split_chunks(x, hop, plan_chunks(frames, sr / hop, cfg.chunk_seconds, cfg.split_for_cores))
        ctx, half = int(cfg.context_seconds * sr / hop), int(cfg.crossfade_seconds * sr / 2)
        dctx = min(ctx, max(int(cfg.decoder_context_seconds * sr / hop), math.ceil(half / hop) + 1))
        sid = torch.tensor([[self.speaker_id(cfg.speaker)]], device=self.device)
        on_cpu = self.device == "cpu"
        workers = max(1, min(cfg.workers or torch.get_num_threads(), len(chunks))) if on_cpu else 1
        size = max(1, cfg.batch_size or (1 if on_cpu else 8))
        groups = [list(range(k, min(k + size, len(chunks)))) for k in range(0, len(chunks), size)]
        pool = ThreadPoolExecutor(workers) if workers > 1 else None
        threads = ExitStack()
        try:
            f0, uv = C.interpolate_f0(self._f0(x, chunks, ctx, cfg.f0_method, pool))
            semitones, predict = self.shift(f0, uv, cfg)
            f0 = f0 * 2 ** (semitones / 12)
            log.info("F0 shift %+.2f semitones%s", semitones, "; F0 decoder on" if predict else "")

            def run(group: list[int]) -> list[tuple[int, np.ndarray]]:
                """Convert chunks as one batch (one chunk per call on a CPU; several on a GPU):
                (first frame, audio) for each."""
                spans = [(max(chunks[k][0] - ctx, 0), min(chunks[k][1] + ctx, frames)) for k in group]
                n = max(b0 - a0 for a0, b0 in spans)
                # one chunk: decode only the chunk and dctx frames around it; a batch decodes whole rows
                one = len(group) == 1
                d0, d1 = (max(chunks[group[0]][0] - dctx, 0), min(chunks[group[0]][1] + dctx, frames)) if one else (0, 0)
                with torch.inference_mode():
                    c = torch.zeros(len(group), self.encoder.dim, n)  # padding: zero content, unvoiced
                    f0b, uvb = np.zeros((len(group), n), np.float32), np.zeros((len(group), n), np.float32)
                    for i, (a0, b0) in enumerate(spans):
                        c[i, :, :b0 - a0] = C.repeat_expand(
                            self.encoder.encode(S.resample(x[a0 * hop:b0 * hop], sr, C.HUBERT_SR).astype(np.float32)), b0 - a0)
                        f0b[i, :b0 - a0], uvb[i, :b0 - a0] = f0[a0:b0], uv[a0:b0]
                    lengths = torch.tensor([b0 - a0 for a0, b0 in spans], device=self.device)
                    gen = torch.Generator(device=self.device).manual_seed(cfg.seed + group[0])
                    y = self.net_g.infer(c.to(self.device), torch.as_tensor(f0b, device=self.device),
                                         torch.as_tensor(uvb, device=self.device), g=sid.expand(len(group), 1),
                                         noice_scale=cfg.noise_scale, predict_f0=predict, generator=gen,
                                         c_lengths=None if one else lengths,
                                         dec_span=(d0 - spans[0][0], d1 - spans[0][0]) if one else None)
                y = y[:, 0].float().cpu().numpy()
                if one:
                    return [(d0, y[0])]
                return [(a0, y[i, :(b0 - a0) * hop]) for i, (a0, b0) in enumerate(spans)]

            if pool is not None:  # one chunk per core: faster than one chunk on all cores (docs/sovits.md)
                threads.enter_context(torch_threads(torch.get_num_threads() // workers))
            batches = pool.map(run, groups) if pool is not None else map(run, groups)
            results = (y for batch in batches for y in batch)
            out = np.zeros(len(x), dtype=np.float32)
            for k, ((a, b), (start, y)) in enumerate(zip(chunks, results)):
                s0, s1 = max(a * hop - half, 0), min(b * hop + half, len(x))
                w = np.ones(s1 - s0, dtype=np.float32)
                if a > 0:
                    w[:2 * half] = np.linspace(0, 1, 2 * half, dtype=np.float32)
                if b < frames:
                    w[-2 * half:] = np.linspace(1, 0, 2 * half, dtype=np.float32)
                out[s0:s1] += w * y[s0 - start * hop:s1 - start * hop]
                if progress:
                    progress(k + 1, len(chunks))
        finally:
            if pool is not None:
                pool.shutdown(cancel_futures=True)
            threads.close()
        return out[:n_in]

    def _f0(self, x: np.ndarray, chunks: list[tuple[int, int]], ctx: int, method: str,
            pool: ThreadPoolExecutor | None) -> np.ndarray:
        """Raw F0 of the whole input, computed chunk by chunk (with `ctx` frames of context, at the
        whole input's level) in the pool's threads: pyworld lets go of the GIL. A single chunk gives the
        fork's whole-input F0 exactly; near the joins of several it can differ by float rounding, and
        rarely by a voicing decision."""
        hop, frames, peak = self.hop, len(x) // self.hop, C.f0_peak(x)

        def piece(chunk: tuple[int, int]) -> np.ndarray:
            a, b = chunk
            a0, b0 = max(a - ctx, 0), min(b + ctx, frames)
            f0 = C.compute_f0(x[a0 * hop:b0 * hop], self.sample_rate, hop, method, b0 - a0, peak, self.device)
            return f0[a - a0:b - a0]

        return np.concatenate(list(pool.map(piece, chunks) if pool is not None else map(piece, chunks)))


def plan_chunks(frames: int, rate: float, chunk_seconds: float, for_cores: bool = True) -> int:
    """How many chunks to cut `frames` into: about `chunk_seconds` each at most; with `for_cores`, anything
    over 4 s in at least two and an even number, so two cores share the work evenly. Depends on the input
    only, never on the machine, so the output for a given seed is the same everywhere."""
    n = max(1, math.ceil(frames / (chunk_seconds * rate)))
    if for_cores and frames >= 4 * rate:
        n = max(n, 2)
        n += n % 2
    return n


def split_chunks(x: np.ndarray, hop: int, n: int) -> list[tuple[int, int]]:
    """n frame ranges covering x. Each cut lies within a quarter chunk of its ideal (equal-length) position,
    at the frame nearest that position among those within 6 dB of the quietest there: in a pause, and
    with the chunks as equal as the pauses allow (the cores share them, so the longest sets the time)."""
    frames = len(x) // hop
    if n <= 1:
        return [(0, frames)]
    energy = np.square(x[:frames * hop].reshape(frames, hop)).mean(axis=1)
    energy = np.convolve(energy, np.ones(5) / 5, mode="same")  # a pause, not a single quiet frame
    reach = max(1, frames // n // 4)
    cuts = [0]
    for k in range(1, n):
        ideal = round(k * frames / n)
        lo, hi = max(ideal - reach, cuts[-1] + 1), min(ideal + reach, frames - 1)
        if hi < lo:
            cuts.append(ideal)
            continue
        quiet = np.flatnonzero(energy[lo:hi + 1] <= 4 * energy[lo:hi + 1].min() + 1e-12) + lo
        cuts.append(int(quiet[np.argmin(np.abs(quiet - ideal))]))
    return list(zip(cuts, cuts[1:] + [frames]))


def convert_array(x: np.ndarray, sr: int, voice: SovitsVoice, cfg: ConvertConfig | None = None,
                  progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """Convert mono audio at any sample rate; returns audio at the model's sample rate."""
    start = time.perf_counter()
    y = voice.convert(S.resample(x, sr, voice.sample_rate).astype(np.float32), cfg, progress)
    took = time.perf_counter() - start
    log.info("converted %.1f s in %.2f s (real-time factor %.3f)", len(x) / sr, took, took / max(len(x) / sr, 1e-9))
    return y
