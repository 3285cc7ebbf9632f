"""Offline voice backend on the WORLD vocoder: trains in seconds on a CPU, no downloaded weights.

Training analyses the target speaker's clips with WORLD and keeps: log-F0 statistics,
mel-cepstral statistics for voiced and unvoiced frames, the long-term average
envelope of voiced frames, and a pool of the target's mel-cepstral frames.

Conversion analyses the driver's speech, maps its F0 to the target's log-F0
statistics (automatic transposition) or transposes it by N semitones, converts
its spectral envelope, and resynthesises with WORLD. Spectral methods:

- ``pitch``: F0 conversion only (a baseline: the driver's envelope is kept).
- ``warp``: frequency warping of the envelope by the ratio that best matches the
  target's long-term average envelope, then a per-coefficient mean and variance
  mapping of the mel-cepstrum to the target's statistics.
- ``knn``: each driver frame is replaced by the mean of its k nearest target frames
  (same voicing) in a speaker-normalised space (mel-cepstra with per-speaker mean and
  variance normalisation), then smoothed over time: the DSP ancestor of kNN-VC.
- ``warp-knn``: the ``warp`` result is the query for the kNN search; the output is the
  neighbours' mean (``blend`` < 1 mixes the warped frame back in).
- ``ppg``: the kNN search compares phonetic posteriorgrams (phone posteriors of
  pocketsphinx's bundled acoustic model, see ``phonetic.py``) of the frame and of its
  neighbours 30 and 60 ms away, instead of cepstra: what is said, not who says it.
- ``ppg-net`` (default, best by measurement, see docs/voice.md): a small network maps the
  posteriors and the driver's normalised cepstra, with context, to the target's cepstra;
  it is trained on the target's frames shown frequency-warped as other speakers would be
  (``ppgnet.py``). Averaged rather than spliced frames: more intelligible than ``ppg``.

All methods fill short unvoiced gaps (up to ``f0_fill`` frames) inside voiced stretches
of the F0 track before synthesis: DIO drops voicing there, and the buzz-noise switching
costs intelligibility.

The driver's F0 is analysed with Harvest for ``ppg-net`` and DIO for the other methods
(``convert_f0="auto"``; the model file records the choice). Harvest voices more frames and raises
the similarity, but did not lower the WER of ``ppg`` (docs/voice.md). Harvest runs on two pieces
of the input cut at a quiet point, on two threads where two cores are available, beside the
phone posteriors. Training always uses DIO.

The model is one safetensors file; its metadata (key ``reenact``) is JSON: sample
rate, method, statistics, training data summary.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from multiprocessing import get_context
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import pyworld
from safetensors.numpy import load_file, save_file

from reenact.errors import ReenactError
from reenact.files import atomic_write, clear_stale_partials
from reenact.media.container import check_output_path
from reenact.threads import torch_threads
from reenact.voice import signal as S
from reenact.voice.dataset import dataset_clips
from reenact.voice.world import analysis as F
from reenact.voice.world import ppgnet
from reenact.voice.world.phonetic import RATE as PPG_RATE
from reenact.voice.world.phonetic import context_stack, load_phone_model, posteriorgram
from reenact.voice.world.ppgnet import NetConfig

log = logging.getLogger(__name__)

FORMAT = "reenact-voice-world"
METHODS = ("pitch", "warp", "knn", "warp-knn", "ppg", "ppg-net")
PPG_METHODS = ("ppg", "ppg-net")  # methods that need the phone posteriors


@dataclass
class TrainConfig:
    method: str = "ppg-net"
    sample_rate: int = 24000
    dims: int = 40  # mel-cepstral coefficients kept
    match_dims: int = 6  # coefficients 1..match_dims-1 are compared in the kNN search
    k: int = 6  # neighbours averaged per frame
    smooth: int = 3  # frames of the moving average over the converted cepstra
    blend: float = 1.0  # warp-knn, ppg: weight of the neighbours' mean against the warped frame
    target_ap: bool = True  # kNN methods: take the aperiodicity of the chosen target frames
    target_energy: float = 0.0  # kNN methods: weight of the chosen frames' level (c0) against the driver's
    ppg_context: tuple[int, ...] = (6, 12)  # ppg: frames (5 ms) either side whose posteriors join the query
    ppg_scale: float = 0.2  # ppg: acoustic score scale before the softmax (flattens the posteriors)
    f0_fill: int = 10  # unvoiced gaps of at most this many frames between voiced frames get interpolated F0
    convert_f0: str = "auto"  # F0 analysis of the driver at conversion: "dio", "harvest", or "auto": harvest for
    # ppg-net, dio for the others (by measurement, docs/voice.md); the model file records the one chosen
    net: NetConfig = field(default_factory=NetConfig)  # ppg-net: the network and its training
    max_pool: int = 120_000  # target frames kept for the search
    min_minutes: float = 0.5  # of voiced speech (about a minute of talking: half of speech is voiced); less is refused
    workers: int = 2
    seed: int = 0


@dataclass
class VoiceModel:
    """A trained WORLD voice: tensors plus metadata, as stored in the model file."""

    meta: dict
    tensors: dict[str, np.ndarray] = field(repr=False)
    _cache: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def pool(self, voiced: bool, match_dims: int):
        """Search tree over target-normalised cepstra 1..match_dims-1, and values (cepstra + coded aperiodicity)."""
        from scipy.spatial import cKDTree

        key = (voiced, match_dims)
        if key not in self._cache:
            t = self.tensors
            sel = t["pool_voiced"].astype(bool) == voiced
            if sel.sum() < 16:
                sel[:] = True
            name = "voiced" if voiced else "unvoiced"
            mc = t["pool_mc"][sel].astype(np.float64)
            mean, std = t[f"mc_mean_{name}"][1:match_dims], t[f"mc_std_{name}"][1:match_dims]
            values = np.concatenate([mc, t["pool_ap"][sel].astype(np.float64)], axis=1)
            self._cache[key] = (cKDTree((mc[:, 1:match_dims] - mean) / std), values)
        return self._cache[key]

    def ppg_pool(self, voiced: bool):
        """Pool frames of one voicing, sorted by their most likely phone: keys (posteriors with context),
        values (cepstra + coded aperiodicity), {phone: (first row, end row)}, squared key norms."""
        key = ("ppg", voiced)
        if key not in self._cache:
            t = self.tensors
            sel = t["pool_voiced"].astype(bool) == voiced
            if sel.sum() < 16:
                sel[:] = True
            post = t["pool_ppg"].astype(np.float32)
            keys = context_stack(post, tuple(self.meta["config"]["ppg_context"]), t["pool_clip"])[sel]
            values = np.concatenate([t["pool_mc"][sel], t["pool_ap"][sel]], axis=1).astype(np.float64)
            top = keys[:, : int(self.meta["ppg_phones"])].argmax(axis=1)
            order = np.argsort(top, kind="stable")  # contiguous groups: the search reads slices, no copies
            keys, values, top = np.ascontiguousarray(keys[order]), values[order], top[order]
            bounds = np.searchsorted(top, np.arange(top.max() + 2))
            groups = {a: (int(lo), int(hi)) for a, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])) if hi > lo}
            self._cache[key] = (keys, values, groups, (keys * keys).sum(axis=1))
        return self._cache[key]

    @property
    def sample_rate(self) -> int:
        return int(self.meta["sample_rate"])

    @property
    def method(self) -> str:
        return str(self.meta["method"])

    def save(self, path: Path) -> Path:
        path = Path(path)
        with atomic_write(path) as tmp:
            save_file({k: np.ascontiguousarray(v) for k, v in self.tensors.items()}, str(tmp),
                      metadata={"reenact": json.dumps(self.meta)})
        return path

    @classmethod
    def load(cls, path: str | Path) -> "VoiceModel":
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise ReenactError("voice model not found", path)
        try:
            with safe_open(str(path), framework="numpy") as f:
                meta = json.loads((f.metadata() or {}).get("reenact", "{}"))
            tensors = load_file(str(path))
        except Exception as exc:  # safetensors raises several types for a bad file
            raise ReenactError(f"is not a reenact voice model ({type(exc).__name__})", path) from None
        if meta.get("format") != FORMAT:
            raise ReenactError("is not a reenact voice model (metadata has no 'reenact' format)", path)
        model = cls(meta, tensors)
        model.check(path)
        return model

    def check(self, path: Path | None = None) -> None:
        """Raise ReenactError naming the tensor when one that the model's method needs is missing or has the
        wrong shape (a damaged or hand-edited file), before any audio is read."""
        try:
            method, dims = str(self.meta["method"]), int(self.meta["dims"])
            phones = int(self.meta.get("ppg_phones") or 0)
            int(self.meta["sample_rate"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ReenactError(f"voice model metadata is incomplete ({type(exc).__name__}: {exc})", path) from None
        if method not in METHODS:
            raise ReenactError(f"voice model has an unknown method {method!r}", path)
        spec: dict[str, tuple] = {"pool_mc": ("N", dims), "pool_voiced": ("N",), "pool_ap": ("N", "A"),
                                  "ltas": ("F",)}
        for name in ("voiced", "unvoiced"):
            spec[f"mc_mean_{name}"] = spec[f"mc_std_{name}"] = (dims,)
        if method in PPG_METHODS:
            spec.update(pool_ppg=("N", phones), pool_clip=("N",))
        if method == "ppg-net":
            n_in = ppgnet.input_width(phones)
            spec.update(net_0_weight=("M", "H", n_in), net_0_bias=("M", "H"), net_2_weight=("M", "H", "H"),
                        net_2_bias=("M", "H"), net_4_weight=("M", "O", "H"), net_4_bias=("M", "O"),
                        net_x_mean=("M", n_in), net_x_std=("M", n_in), net_y_mean=("M", "O"), net_y_std=("M", "O"),
                        net_y_spread=("O",))
        for name, shape in spec.items():
            if name not in self.tensors:
                raise ReenactError(f"voice model is damaged or incomplete: it has no tensor {name}, which its "
                                   f"method {method} needs", path)
            if self.tensors[name].ndim != len(shape):
                raise ReenactError(f"voice model is damaged: tensor {name} has shape {self.tensors[name].shape}, "
                                   f"expected {len(shape)} dimensions", path)
        votes: dict[str, list[int]] = defaultdict(list)  # each size the tensors agree on, by majority
        for name, shape in spec.items():
            for want, got in zip(shape, self.tensors[name].shape):
                if isinstance(want, str):
                    votes[want].append(int(got))
        sizes = {k: max(set(v), key=v.count) for k, v in votes.items()}
        if "O" in sizes and "A" in sizes:
            sizes["O"] = dims - 1 + sizes["A"]  # the networks give cepstra 1.. and the coded aperiodicity
        for name, shape in spec.items():
            want = tuple(sizes.get(d, d) if isinstance(d, str) else d for d in shape)
            if tuple(self.tensors[name].shape) != want or 0 in want:
                raise ReenactError(f"voice model is damaged: tensor {name} has shape {self.tensors[name].shape}, "
                                   f"expected {want}", path)


# ---------------------------------------------------------------- training


def _analyse_clip(args: tuple[str, int, int, dict | None]) -> dict:
    path, fs, dims, ppg = args
    try:
        x = S.load_mono(path, fs)
        S.check_signal(x, fs, Path(path), min_seconds=0.1)
    except ReenactError as exc:
        return {"error": str(exc)}
    w = F.analyze(x, fs)
    speech = speech_frames(w.sp)
    sp, _ = F.fill_band(w.sp, speech)
    mc = F.cepstrum(fs, sp.shape[1], dims).encode(sp)
    cap = pyworld.code_aperiodicity(np.ascontiguousarray(w.ap), fs)
    voiced = (w.f0 > 0) & speech
    voiced_seconds = float((voiced & audible_frames(x, fs, len(voiced))).sum()) * F.FRAME_PERIOD / 1000
    logsp = np.log(np.maximum(sp[voiced], 1e-16))
    extra = {}
    if ppg is not None:  # phone posteriors of the speech frames; the context is stacked when the model loads
        extra["ppg"] = ppg_features(x, fs, len(mc), ppg["scale"], ())[speech].astype(np.float16)
    return {**extra, "mc": mc[speech].astype(np.float32), "ap": cap[speech].astype(np.float32),
            "voiced": voiced[speech], "f0": w.f0[w.f0 > 0],
            "ltas_sum": logsp.sum(axis=0), "ltas_n": int(voiced.sum()), "seconds": len(x) / fs,
            "voiced_seconds": voiced_seconds}


def audible_frames(x: np.ndarray, fs: int, n: int, floor_db: float = -70.0) -> np.ndarray:
    """Frames (every FRAME_PERIOD ms) whose 20 ms neighbourhood is louder than `floor_db` dBFS: not digital
    silence or a faint hiss, whatever the rest of the recording's level."""
    hop = fs * F.FRAME_PERIOD / 1000
    centre = (np.arange(n) * hop).astype(np.int64)
    half = int(0.01 * fs)
    energy = np.concatenate([[0.0], np.cumsum(np.square(x, dtype=np.float64))])
    lo, hi = np.clip(centre - half, 0, len(x)), np.clip(centre + half, 0, len(x))
    power = (energy[hi] - energy[lo]) / np.maximum(hi - lo, 1)
    return 10 * np.log10(power + 1e-20) > floor_db


def speech_frames(sp: np.ndarray, floor_db: float = 45.0) -> np.ndarray:
    """Frames within `floor_db` of the utterance's loud frames (not silence)."""
    level = 10 * np.log10(np.mean(sp, axis=1) + 1e-20)
    if len(level) == 0:
        return np.zeros(0, bool)
    return level > np.percentile(level, 95) - floor_db


def train_voice(dataset_dir: Path, out_path: Path, config: TrainConfig | None = None) -> Path:
    """Train a WORLD voice model on the clips of `dataset_dir`; write it to `out_path` (one file)."""
    config = config or TrainConfig()
    if config.convert_f0 == "auto":
        config = replace(config, convert_f0="harvest" if config.method == "ppg-net" else "dio")
    if config.method not in METHODS:
        raise ReenactError(f"unknown voice method {config.method!r}; choose one of {', '.join(METHODS)}")
    out_path = Path(out_path)
    if out_path.is_dir():
        raise ReenactError("is a folder; give a model file name such as voice.safetensors", out_path)
    if out_path.suffix != ".safetensors":
        raise ReenactError("the model file name must end in .safetensors (e.g. voice.safetensors)", out_path)
    if not out_path.parent.exists():
        raise ReenactError(f"output folder {out_path.parent} does not exist; create it first", out_path)
    check_output_path(out_path)  # a folder a file can be written in, before the training
    clear_stale_partials(out_path)
    clips = dataset_clips(dataset_dir)
    if not clips:
        raise ReenactError("dataset has no audio clips (run `reenact voice prepare` first)", dataset_dir)
    start = time.perf_counter()
    fs, dims = config.sample_rate, config.dims
    ppg = {"scale": config.ppg_scale, "context": tuple(config.ppg_context)} if config.method in PPG_METHODS else None
    jobs = [(str(p), fs, dims, ppg) for p in clips]
    if config.workers > 1 and len(jobs) > 4:
        with ProcessPoolExecutor(config.workers, mp_context=get_context("spawn")) as pool:
            parts = list(pool.map(_analyse_clip, jobs, chunksize=4))
    else:
        parts = [_analyse_clip(j) for j in jobs]
    for p in parts:
        if "error" in p:
            log.warning("skipped %s", p["error"])
    parts = [p for p in parts if "error" not in p]
    if not parts:
        raise ReenactError("dataset has no readable audio clips", dataset_dir)
    seconds = sum(p["seconds"] for p in parts)
    mc = np.concatenate([p["mc"] for p in parts])
    voiced = np.concatenate([p["voiced"] for p in parts])
    ap = np.concatenate([p["ap"] for p in parts])
    # Speech is what is voiced and audible: digital silence, hiss and whispers have no voice to learn.
    speech_seconds = sum(p["voiced_seconds"] for p in parts)
    if speech_seconds < 60 * config.min_minutes:
        raise ReenactError(
            f"dataset has {speech_seconds / 60:.2f} min of voiced speech in {seconds / 60:.2f} min of audio (the "
            f"rest is silence, noise or unvoiced); at least {config.min_minutes:g} min of voiced speech, about "
            f"{2 * config.min_minutes:g} min of talking, is needed (10 to 20 min recommended)", dataset_dir)
    f0 = np.concatenate([p["f0"] for p in parts])
    lf0_mean, lf0_std, _ = F.lf0_stats(f0)
    ltas = sum(p["ltas_sum"] for p in parts) / max(1, sum(p["ltas_n"] for p in parts))
    rng = np.random.default_rng(config.seed)
    clip = np.concatenate([np.full(len(p["mc"]), i, np.int32) for i, p in enumerate(parts)])
    if len(mc) <= config.max_pool:
        keep = np.arange(len(mc))
    elif ppg is not None:  # whole clips (in random order), so that each frame keeps its neighbours for the context
        starts = np.searchsorted(clip, np.arange(len(parts)))
        sizes = np.bincount(clip, minlength=len(parts))
        order = rng.permutation(len(parts))
        keep = np.sort(np.concatenate([np.arange(starts[c], starts[c] + sizes[c]) for c in order])[: config.max_pool])
    else:
        keep = np.sort(rng.permutation(len(mc))[: config.max_pool])
    tensors = {
        "pool_mc": mc[keep].astype(np.float16),
        "pool_voiced": voiced[keep].astype(np.uint8),
        "pool_ap": ap[keep].astype(np.float16),
        "ltas": ltas.astype(np.float32),
    }
    if ppg is not None:
        tensors["pool_ppg"] = np.concatenate([p["ppg"] for p in parts])[keep]
        tensors["pool_clip"] = clip[keep]
    if config.method == "ppg-net":
        cep = F.cepstrum(fs, pyworld.get_cheaptrick_fft_size(fs) // 2 + 1, dims)
        tensors.update(ppgnet.train(mc[keep], ap[keep], tensors["pool_ppg"], voiced[keep], clip[keep], cep,
                                    config.net))
    for name, mask in (("voiced", voiced), ("unvoiced", ~voiced)):
        sel = mc[mask] if mask.sum() > 10 else mc
        tensors[f"mc_mean_{name}"] = sel.mean(axis=0).astype(np.float32)
        tensors[f"mc_std_{name}"] = (sel.std(axis=0) + 1e-6).astype(np.float32)
    meta = {
        "format": FORMAT, "version": 1, "method": config.method, "sample_rate": fs,
        "frame_period": F.FRAME_PERIOD, "dims": dims, "lf0_mean": lf0_mean, "lf0_std": lf0_std,
        "f0_median_hz": float(np.exp(lf0_mean)) if lf0_mean else 0.0,
        "ppg_phones": len(load_phone_model().phones) if ppg is not None else 0,
        "config": asdict(config),
        "training": {"dataset": str(Path(dataset_dir).resolve()), "clips": len(parts),
                     "minutes": round(seconds / 60, 3), "speech_minutes": round(speech_seconds / 60, 3),
                     "pool_frames": int(len(keep)), "seconds_to_train": None,
                     "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
    }
    meta["training"]["seconds_to_train"] = round(time.perf_counter() - start, 2)
    VoiceModel(meta, tensors).save(out_path)
    log.info("trained %s voice on %.1f min (%d clips) in %.1f s", config.method, seconds / 60, len(clips),
             meta["training"]["seconds_to_train"])
    return out_path


# ---------------------------------------------------------------- conversion


CHUNK_SECONDS = 60.0  # longer inputs are converted in pieces cut in pauses (bounded memory)


def convert_f0(f0: np.ndarray, model: VoiceModel, transpose: str | float = "auto",
               stats: tuple[float, float, int] | None = None) -> np.ndarray:
    """Map voiced F0 to the target: log-Gaussian normalisation ("auto") or N semitones. The driver's log-F0
    statistics are those of `f0` unless `stats` gives them (those of the whole input, for a piece of it)."""
    out = f0.copy()
    v = f0 > 0
    if not v.any():
        return out
    if transpose != "auto":
        out[v] = f0[v] * 2.0 ** (float(transpose) / 12)
        return out
    mean, std, n = stats or F.lf0_stats(f0)
    t_mean, t_std = model.meta["lf0_mean"], model.meta["lf0_std"]
    ratio = t_std / std if n >= 20 and std > 1e-3 else 1.0
    out[v] = np.exp(t_mean + ratio * (np.log(f0[v]) - mean))
    return np.clip(out, 0, F.F0_CEIL * 1.5)


def fill_f0_gaps(f0: np.ndarray, max_gap: int) -> np.ndarray:
    """Interpolate log-F0 across unvoiced gaps of at most `max_gap` frames between voiced frames."""
    out = f0.copy()
    idx = np.nonzero(f0 > 0)[0]
    if max_gap < 1 or len(idx) < 2:
        return out
    for i, j in zip(idx[:-1], idx[1:]):
        if 1 < j - i <= max_gap:
            out[i + 1 : j] = np.exp(np.interp(np.arange(i + 1, j), [i, j], np.log([f0[i], f0[j]])))
    return out


def ppg_features(x: np.ndarray, fs: int, n_frames: int, scale: float, context: tuple[int, ...]) -> np.ndarray:
    """Phone posteriors per WORLD frame, joined by those `context` frames before and after (weight 0.7).

    Returns (n_frames, P * (1 + 2 * len(context))) for the model's P phones.
    """
    post = np.exp(posteriorgram(S.resample(x, fs, PPG_RATE), scale=scale))  # 10 ms frames
    if len(post) == 0:
        post = np.full((1, len(load_phone_model().phones)), 1.0 / len(load_phone_model().phones))
    # WORLD frame t is centred at t * 5 ms; Sphinx frame i at i * 10 ms + 12.8 ms
    pos = np.clip((np.arange(n_frames) * F.FRAME_PERIOD - 12.8) / 10.0, 0, len(post) - 1)
    lo = np.minimum(np.floor(pos).astype(int), len(post) - 1)
    hi = np.minimum(lo + 1, len(post) - 1)
    frac = (pos - lo)[:, None]
    return context_stack((1 - frac) * post[lo] + frac * post[hi], context)


def _ppg_knn(query: np.ndarray, pool: tuple, k: int, n_phones: int) -> np.ndarray:
    """Mean of the values of the k nearest pool frames (Euclidean on posteriors), searched among the pool
    frames whose most likely phone is the query's."""
    import torch  # its top-k is several times faster than numpy's argpartition

    keys, values, groups, norms = pool
    query = query.astype(np.float32)
    top = query[:, :n_phones].argmax(axis=1)
    out = np.empty((len(query), values.shape[1]))
    with torch_threads(1):  # many small products: threads only add overhead (10x slower on a busy machine)
        for a in np.unique(top):
            rows = np.nonzero(top == a)[0]
            lo, hi = groups.get(int(a), (0, 0))
            if hi - lo < k:
                lo, hi = 0, len(keys)
            q, kk = torch.from_numpy(query[rows]), torch.from_numpy(keys[lo:hi])
            d = torch.from_numpy(norms[lo:hi])[None] - 2 * q @ kk.T
            nn = torch.topk(d, min(k, hi - lo), dim=1, largest=False).indices.numpy()
            out[rows] = values[lo + nn].mean(axis=1)
    return out


def _stats(mc: np.ndarray, mask: np.ndarray, fallback_std: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if mask.sum() < 20:
        sel = mc if len(mc) else np.zeros((1, mc.shape[1]))
        return sel.mean(axis=0), fallback_std
    return mc[mask].mean(axis=0), mc[mask].std(axis=0) + 1e-6


def best_warp(sp: np.ndarray, voiced: np.ndarray, ltas: np.ndarray, fs: int) -> float:
    """Frequency-warping ratio that best matches the utterance's average envelope to the target's."""
    if voiced.sum() < 20:
        return 1.0
    src = np.log(np.maximum(sp[voiced], 1e-16)).mean(axis=0)
    n = len(src)
    hz = np.arange(n) * fs / 2 / (n - 1)
    band = (hz > 100) & (hz < min(3800.0, fs / 2 * 0.9))  # 3.8 kHz: also valid for 8 kHz inputs
    best, best_err = 1.0, np.inf
    for ratio in np.arange(0.80, 1.40, 0.01):
        warped = np.interp(np.arange(n) / ratio, np.arange(n), src)
        d = (warped - ltas)[band]
        err = float(np.mean((d - d.mean()) ** 2))
        if err < best_err:
            best, best_err = float(ratio), err
    return best


def _knn_mean(query: np.ndarray, pool: tuple, k: int) -> np.ndarray:
    """Mean of the values of the k nearest keys (Euclidean, exact, k-d tree) of each query row."""
    tree, values = pool
    k = min(k, tree.n)
    _, idx = tree.query(query, k=k)
    return values[idx.reshape(len(query), k)].mean(axis=1)


def _moving_average(x: np.ndarray, n: int) -> np.ndarray:
    from scipy.ndimage import uniform_filter1d

    return uniform_filter1d(x, n, axis=0, mode="nearest") if n > 1 and len(x) > 1 else x


def convert_spectrum(w: F.World, model: VoiceModel, method: str | None = None,
                     x: np.ndarray | None = None, ppg: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Convert the envelope (and, for kNN methods, the aperiodicity) of `w` to the target speaker.

    The ``ppg`` method also needs the signal `x` (at the model's rate) that `w` analyses, or its
    query posteriors `ppg` (`query_ppg`) when they were computed beforehand.
    """
    method = method or model.method
    t, cfg = model.tensors, model.meta["config"]
    if method in PPG_METHODS and (not has_method(model, method) or (x is None and ppg is None)):
        raise ReenactError(f"the {method} method needs a model trained with --method {method} and the input signal")
    fs = w.sample_rate
    speech = speech_frames(w.sp)
    voiced = w.f0 > 0
    sp, edge = F.fill_band(w.sp, speech)
    if edge < sp.shape[1]:
        log.debug("input band ends at %.0f Hz; extended flat above", edge * fs / 2 / (sp.shape[1] - 1))
    if method == "pitch":  # F0 conversion only: the driver's envelope and aperiodicity are kept
        return w.sp, w.ap
    if method in ("warp", "warp-knn", "ppg", "ppg-net"):
        ratio = best_warp(sp, voiced & speech, t["ltas"], fs)
        log.debug("frequency warp ratio %.2f", ratio)
        sp_in, sp = sp, F.warp_envelope(sp, ratio)
    cep = F.cepstrum(fs, sp.shape[1], int(model.meta["dims"]))
    mc = cep.encode(sp)
    out = mc.copy()
    cap = pyworld.code_aperiodicity(np.ascontiguousarray(w.ap), fs)
    out_ap = cap.copy()
    m, k = int(cfg.get("match_dims", 24)), int(cfg.get("k", 4))
    if method in PPG_METHODS and (ppg is None or len(ppg) != len(mc)):
        ppg = query_ppg(x, model, len(mc), method)
    if method == "ppg-net":  # the network reads the driver's own (unwarped) cepstra
        net_out = ppgnet.convert(t, cep.encode(sp_in), ppg, voiced, speech, float(cfg.get("net", {}).get("gv", 0.5)))
        net_rows = np.cumsum(speech) - 1  # row of each speech frame in net_out
    for name, mask in (("voiced", voiced & speech), ("unvoiced", ~voiced & speech)):
        if not mask.any():
            continue
        mean_t, std_t = t[f"mc_mean_{name}"].astype(np.float64), t[f"mc_std_{name}"].astype(np.float64)
        mean_s, std_s = _stats(mc, mask, std_t)
        mapped = mean_t + std_t / std_s * (mc[mask] - mean_s)
        if method == "warp":
            out[mask, 1:] = mapped[:, 1:]
            continue
        if method == "ppg-net":
            found = np.concatenate([np.zeros((int(mask.sum()), 1)), net_out[net_rows[mask]]], axis=1)
        elif method == "ppg":
            found = _ppg_knn(ppg[mask], model.ppg_pool(name == "voiced"), k, int(model.meta["ppg_phones"]))
        else:
            query = (mc[mask, 1:m] - mean_s[1:m]) / std_s[1:m] if method == "knn" else \
                (mapped[:, 1:m] - mean_t[1:m]) / std_t[1:m]
            found = _knn_mean(query, model.pool(name == "voiced", m), k)
        dims = mc.shape[1]
        found_mc, found_ap = found[:, :dims], found[:, dims:]
        if method in ("warp-knn", "ppg", "ppg-net"):
            b = float(cfg.get("blend", 1.0))
            found_mc[:, 1:] = b * found_mc[:, 1:] + (1 - b) * mapped[:, 1:]
        c0 = float(cfg.get("target_energy", 0.0))  # weight of the neighbours' level against the driver's
        found_mc[:, 0] = c0 * found_mc[:, 0] + (1 - c0) * mapped[:, 0]
        out[mask] = found_mc
        if cfg.get("target_ap", True):
            out_ap[mask] = found_ap
    out[:, 1:] = _moving_average(out[:, 1:], int(cfg.get("smooth", 1)))
    out[~speech] = mc[~speech]  # silence stays as it was
    out_ap[~speech] = cap[~speech]
    ap = pyworld.decode_aperiodicity(np.ascontiguousarray(out_ap, dtype=np.float64), fs,
                                     pyworld.get_cheaptrick_fft_size(fs))
    return cap_frame_gain(w.sp, cep.decode(out), speech), ap


def cap_frame_gain(sp_in: np.ndarray, sp_out: np.ndarray, speech: np.ndarray, cap_db: float = 30.0) -> np.ndarray:
    """Limit each frame's energy gain (output over input envelope) to `cap_db` above the median gain of the
    speech frames. The level (c0) is mapped as a mean of the log envelope, which keeps the energy of a
    speech frame but not of a flat one: a near-silent, flat frame taken for speech and given a vowel's
    shape came out ~70 dB louder (a burst that, peak-normalised, made a whole input quieter). In speech
    the gain stays within ~25 dB of its median (15 kal_drive utterances), so the cap leaves it alone."""
    gain = np.log(sp_out.sum(axis=1) + 1e-30) - np.log(sp_in.sum(axis=1) + 1e-30)
    if not speech.any():
        return sp_out
    excess = gain - (np.median(gain[speech]) + cap_db * np.log(10) / 10)
    over = excess > 0
    if over.any():
        log.debug("%d frames over the gain cap (up to %.0f dB)", int(over.sum()), excess.max() * 10 / np.log(10))
        sp_out = sp_out.copy()
        sp_out[over] *= np.exp(-excess[over])[:, None]
    return sp_out


def query_ppg(x: np.ndarray, model: VoiceModel, n_frames: int, method: str = "ppg") -> np.ndarray:
    """The phone posteriors of each of the `n_frames` WORLD frames of `x`: for ``ppg`` the search query
    (with the model's context), for ``ppg-net`` the frame's own (the network stacks its context)."""
    cfg = model.meta["config"]
    context = tuple(cfg["ppg_context"]) if method == "ppg" else ()
    return ppg_features(x, model.sample_rate, n_frames, float(cfg["ppg_scale"]), context)


def has_method(model: VoiceModel, method: str) -> bool:
    """Whether `model` holds what `method` needs (the ppg methods need tensors made at training)."""
    if method == "ppg":
        return "pool_ppg" in model.tensors
    if method == "ppg-net":
        return "net_0_weight" in model.tensors
    return method in METHODS


def conversion_threads() -> int:
    """Threads for one conversion: 2 where 2 cores are available (the F0 analysis is cut in two)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(2, cores))


def conversion_f0_method(model: VoiceModel) -> str:
    """The model's F0 method at conversion (``convert_f0``; DIO for models trained before it)."""
    return str(model.meta["config"].get("convert_f0", "dio"))


def analyze_driver(x: np.ndarray, model: VoiceModel, method: str,
                   f0: np.ndarray | None = None) -> tuple[F.World, np.ndarray | None]:
    """WORLD analysis of the driver with the model's conversion F0 method (or the given `f0`, from
    ``features.analyze_f0`` with that method), and for ``ppg`` the query posteriors, computed beside the
    analysis on 2 cores."""
    fs = model.sample_rate
    f0_method = conversion_f0_method(model)
    threads = conversion_threads()
    if method not in PPG_METHODS or not has_method(model, method):
        return F.analyze(x, fs, f0_method=f0_method, threads=threads, f0=f0), None
    n_frames = F.world_frames(len(x), fs)
    if threads < 2:
        return F.analyze(x, fs, f0_method=f0_method, f0=f0), query_ppg(x, model, n_frames, method)
    with ThreadPoolExecutor(1) as side:  # numpy and pyworld release the GIL
        ppg = side.submit(query_ppg, x, model, n_frames, method)
        w = F.analyze(x, fs, f0_method=f0_method, threads=threads, f0=f0)
        return w, ppg.result()


def convert_array(x: np.ndarray, model: VoiceModel, transpose: str | float = "auto",
                  method: str | None = None, chunk_seconds: float = CHUNK_SECONDS,
                  progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """Convert mono float speech at the model's sample rate; same length, same loudness.

    Inputs over `chunk_seconds` are converted piece by piece as `convert_blocks` does, which also calls
    `progress(done, total)`; a shorter input calls it once, with (1, 1)."""
    fs = model.sample_rate
    peak = float(np.max(np.abs(x))) if len(x) else 0.0
    if peak < 1e-4:  # silence converts to silence
        return np.zeros_like(x)
    if len(x) <= chunk_seconds * fs:
        y = _convert_piece(x, model, transpose, method)
        if progress:
            progress(1, 1)
        return y
    # at the model's rate the pieces are cut from `x` itself and each converts to its own length
    return np.concatenate(list(convert_blocks(lambda: iter([x]), fs, model, transpose, method, chunk_seconds,
                                              progress)))


def convert_blocks(read: Callable[[], Iterable[np.ndarray]], rate: int, model: VoiceModel,
                   transpose: str | float = "auto", method: str | None = None,
                   chunk_seconds: float = CHUNK_SECONDS,
                   progress: Callable[[int, int], None] | None = None) -> Iterator[np.ndarray]:
    """Convert a long input, read twice as mono blocks at `rate` by `read()`, piece by piece: yields the
    converted pieces (float32, at the model's rate) in order.

    The pieces are about `chunk_seconds` long and cut in pauses (``features.pause_pieces``), so memory is
    bounded by one piece (WORLD's envelopes take ~25 kB per 5 ms frame) whatever the input's length. The first
    read finds every piece's F0 (small), so that with ``auto`` all are transposed by the log-F0 statistics of
    the whole input; the second converts. `progress(done, total)` is called after each piece of each read:
    the first read's pieces count as the first half, with total 0 (not known yet), then (n + i, 2n)."""
    fs = model.sample_rate
    f0_method, threads = conversion_f0_method(model), conversion_threads()
    fill = int(model.meta["config"].get("f0_fill", 0))
    sizes, f0s = [], []
    for piece in S.pause_pieces(read(), rate, chunk_seconds):
        x = _at_rate(piece, rate, fs)
        S.check_signal(x, fs, None, min_seconds=0.0)
        sizes.append(len(piece))
        f0s.append(F.analyze_f0(x, fs, f0_method=f0_method, threads=threads))
        if progress:
            progress(len(f0s), 0)
    stats = F.lf0_stats(np.concatenate([fill_f0_gaps(f0, fill) for f0 in f0s] or [np.zeros(0)]))
    for i, (piece, f0) in enumerate(zip(S.take_pieces(read(), sizes), f0s)):
        x = _at_rate(piece, rate, fs)
        log.debug("converting piece %d/%d (%.1f s)", i + 1, len(sizes), len(x) / fs)
        part = _convert_piece(x, model, transpose, method, stats, f0).astype(np.float32)
        fade = np.linspace(0.0, 1.0, min(int(0.005 * fs), len(part) // 2))
        if len(fade):  # the cuts are in pauses: fade each piece in and out over 5 ms, so no join clicks
            part[: len(fade)] *= fade
            part[len(part) - len(fade):] *= fade[::-1]
        yield part
        if progress:
            progress(len(sizes) + i + 1, 2 * len(sizes))


def _at_rate(x: np.ndarray, rate: int, fs: int) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x if rate == fs else S.resample(x, rate, fs)


def _convert_piece(x: np.ndarray, model: VoiceModel, transpose: str | float, method: str | None,
                   stats: tuple[float, float, int] | None = None, f0: np.ndarray | None = None) -> np.ndarray:
    fs = model.sample_rate
    if float(np.max(np.abs(x))) < 1e-4:
        return np.zeros_like(x)
    w, ppg = analyze_driver(x, model, method or model.method, f0)
    sp, ap = convert_spectrum(w, model, method, x, ppg)
    f0 = fill_f0_gaps(w.f0, int(model.meta["config"].get("f0_fill", 0)))
    w = F.World(convert_f0(f0, model, transpose, stats), sp, ap, fs, w.frame_period)
    y = F.synthesize(w)[: len(x)]
    y = np.pad(y, (0, len(x) - len(y)))
    rms_in, rms_out = np.sqrt(np.mean(x**2)), np.sqrt(np.mean(y**2)) + 1e-12
    y *= rms_in / rms_out
    top = np.max(np.abs(y))
    return y / top * 0.99 if top > 0.99 else y
