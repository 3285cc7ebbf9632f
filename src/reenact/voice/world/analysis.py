"""WORLD analysis for the offline voice backend: F0, envelope, aperiodicity, mel-cepstra.

WORLD analysis/synthesis (pyworld: DIO or Harvest + StoneMask F0, CheapTrick envelope, D4C
aperiodicity; Harvest and the per-frame analyses can run on several threads, pyworld releases
the GIL), a mel-cepstrum computed as the DCT of the log envelope sampled on a
warped (all-pass, alpha) frequency axis, log-F0 statistics, and frame energies.
"""

from __future__ import annotations

import logging
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable

import numpy as np
import pyworld
from scipy.fft import dct

from reenact.errors import ReenactError
from reenact.voice.signal import frame_db, quiet_frame

log = logging.getLogger(__name__)

FRAME_PERIOD = 5.0  # ms
F0_FLOOR, F0_CEIL = 55.0, 700.0
HARVEST_FLOOR, HARVEST_CEIL = 60.0, 500.0  # speech range: Harvest's cost grows with the octaves searched
F0_METHODS = ("dio", "harvest")


@dataclass
class World:
    """WORLD parameters of one utterance: f0 (T,), envelope sp (T, F), aperiodicity ap (T, F)."""

    f0: np.ndarray
    sp: np.ndarray
    ap: np.ndarray
    sample_rate: int
    frame_period: float = FRAME_PERIOD


def analyze(x: np.ndarray, fs: int, frame_period: float = FRAME_PERIOD, f0_method: str = "dio",
            threads: int = 1, f0: np.ndarray | None = None) -> World:
    """WORLD analysis. `f0_method` "harvest" is slower than "dio" but drops voicing far less often;
    with `threads` > 1 its pieces and the per-frame analyses run in parallel. `f0`, from `analyze_f0`
    with the same method, skips the F0 estimation."""
    return _with_pool(x, fs, frame_period, f0_method, threads, lambda x, pool: _analyze(
        x, fs, frame_period, f0_method, pool, f0))


def analyze_f0(x: np.ndarray, fs: int, frame_period: float = FRAME_PERIOD, f0_method: str = "dio",
               threads: int = 1) -> np.ndarray:
    """The F0 that `analyze` would find (DIO or Harvest, then StoneMask)."""
    return _with_pool(x, fs, frame_period, f0_method, threads, lambda x, pool: _f0(
        x, fs, frame_period, f0_method, pool))


def _with_pool(x: np.ndarray, fs: int, frame_period: float, f0_method: str, threads: int, fn):
    x = np.ascontiguousarray(x, dtype=np.float64)
    if f0_method not in F0_METHODS:
        raise ReenactError(f"unknown F0 method {f0_method!r}; choose one of {', '.join(F0_METHODS)}")
    if threads <= 1 or f0_method == "dio":  # DIO is fast: no threads
        return fn(x, None)
    with ThreadPoolExecutor(threads) as pool:
        return fn(x, pool)


# with Harvest, the frames are analysed in two blocks whatever the threads, so that the result does not
# depend on them: CheapTrick's and D4C's values where the signal is ~0 (silence, an empty band) change
# with the split of the frames (probably WORLD's safeguard noise), though nothing audible does
def _blocks(f0_method: str) -> int:
    return 2 if f0_method == "harvest" else 1


def _f0(x: np.ndarray, fs: int, frame_period: float, f0_method: str, pool: Executor | None) -> np.ndarray:
    if f0_method == "harvest":
        f0 = harvest_f0(x, fs, frame_period, pool=pool)
        t = np.arange(len(f0)) * frame_period / 1000
    else:
        f0, t = pyworld.dio(x, fs, f0_floor=F0_FLOOR, f0_ceil=F0_CEIL, frame_period=frame_period)
    return _per_frames(lambda ti, fi: pyworld.stonemask(x, fi, ti, fs), t, f0, pool, _blocks(f0_method))


def _analyze(x: np.ndarray, fs: int, frame_period: float, f0_method: str, pool: Executor | None,
             f0: np.ndarray | None = None) -> World:
    if f0 is None:
        f0 = _f0(x, fs, frame_period, f0_method, pool)
    f0 = np.ascontiguousarray(f0, dtype=np.float64)
    t = np.arange(len(f0)) * frame_period / 1000
    blocks = _blocks(f0_method)
    sp = _per_frames(lambda ti, fi: pyworld.cheaptrick(x, fi, ti, fs), t, f0, pool, blocks)
    ap = _per_frames(lambda ti, fi: pyworld.d4c(x, fi, ti, fs), t, f0, pool, blocks)
    return World(f0, sp, ap, fs, frame_period)


def _per_frames(fn: Callable[[np.ndarray, np.ndarray], np.ndarray], t: np.ndarray, f0: np.ndarray,
                pool: Executor | None, blocks: int) -> np.ndarray:
    """`fn(t, f0)` of a frame-wise WORLD analysis (the same result for any split of the frames),
    on `blocks` blocks of frames in parallel."""
    if blocks < 2 or len(t) < 32 * blocks:
        return fn(t, f0)
    cuts = np.linspace(0, len(t), blocks + 1).astype(int)
    block = lambda ab: fn(np.ascontiguousarray(t[ab[0]:ab[1]]), np.ascontiguousarray(f0[ab[0]:ab[1]]))
    jobs = list(zip(cuts[:-1], cuts[1:]))
    return np.concatenate(list(pool.map(block, jobs)) if pool is not None else [block(ab) for ab in jobs])


def world_frames(n_samples: int, fs: int, frame_period: float = FRAME_PERIOD) -> int:
    """How many frames pyworld's analysis gives for `n_samples` at `fs`."""
    return 1 + int(n_samples / fs * 1000 / frame_period)


def quiet_cuts(x: np.ndarray, fs: int, n_frames: int, parts: int, frame_period: float = FRAME_PERIOD) -> list[int]:
    """Frame indices 0 < c_1 < ... < n_frames that cut `x` into `parts` pieces of similar length. Each cut
    is in a pause within +-35% of a piece around the even split: the 20 ms frame nearest the even split
    among those within 6 dB of the quietest there, so that the pieces, one per thread, take similar times."""
    if parts < 2 or len(x) < fs * parts:  # pieces under a second are not worth the overhead
        return [0, n_frames]
    db = frame_db(x, fs)  # 20 ms frames every 10 ms
    span = len(db) / parts
    cuts = [0]
    for i in range(1, parts):
        j = quiet_frame(db, int(span * (i - 0.35)), int(span * (i + 0.35)), span * i)
        cuts.append(int(round((j * 10 + 10) / frame_period)))  # centre of the 20 ms frame
    return cuts + [n_frames]


def harvest_f0(x: np.ndarray, fs: int, frame_period: float = FRAME_PERIOD, floor: float = HARVEST_FLOOR,
               ceil: float = HARVEST_CEIL, parts: int = 2, overlap: float = 0.1,
               pool: Executor | None = None) -> np.ndarray:
    """Harvest F0 (Hz per frame, 0 where unvoiced), on `parts` pieces cut at quiet points that overlap by
    `overlap` seconds, so that `pool` can run them in parallel. The pieces do not depend on `pool`."""
    x = np.ascontiguousarray(x, dtype=np.float64)
    hop = fs * frame_period / 1000
    n_frames = world_frames(len(x), fs, frame_period)
    cuts = quiet_cuts(x, fs, n_frames, parts, frame_period)
    margin = int(round(overlap * 1000 / frame_period))

    def piece(i: int) -> np.ndarray:
        a, b = cuts[i], cuts[i + 1]
        first = max(0, a - margin)  # on the frame grid, so that local frame j is global frame first + j
        lo, hi = int(round(first * hop)), min(len(x), int(round((b + margin) * hop)))
        f0, _ = pyworld.harvest(x[lo:hi], fs, f0_floor=floor, f0_ceil=ceil, frame_period=frame_period)
        return f0[a - first : b - first]

    jobs = range(len(cuts) - 1)
    pieces = list(pool.map(piece, jobs)) if pool is not None and len(jobs) > 1 else [piece(i) for i in jobs]
    f0 = np.concatenate(pieces)[:n_frames]
    return np.pad(f0, (0, n_frames - len(f0)))  # a rounding short of the last frame: unvoiced


def f0_track(x: np.ndarray, fs: int, frame_period: float = FRAME_PERIOD, floor: float = F0_FLOOR,
             ceil: float = F0_CEIL) -> np.ndarray:
    """F0 in Hz per frame (DIO + StoneMask), 0 where unvoiced."""
    x = np.ascontiguousarray(x, dtype=np.float64)
    f0, t = pyworld.dio(x, fs, f0_floor=floor, f0_ceil=ceil, frame_period=frame_period)
    return pyworld.stonemask(x, f0, t, fs)


def synthesize(w: World) -> np.ndarray:
    sp = np.ascontiguousarray(w.sp, dtype=np.float64)
    ap = np.ascontiguousarray(np.clip(w.ap, 1e-6, 1.0), dtype=np.float64)
    return pyworld.synthesize(np.ascontiguousarray(w.f0, dtype=np.float64), sp, ap, w.sample_rate, w.frame_period)


def mel_alpha(fs: int) -> float:
    """All-pass constant that approximates the mel scale (SPTK's table, interpolated)."""
    rates = [8000, 11025, 16000, 22050, 24000, 32000, 44100, 48000]
    alphas = [0.31, 0.357, 0.41, 0.455, 0.466, 0.504, 0.544, 0.554]
    return float(np.interp(fs, rates, alphas))


def _warped_axis(n_bins: int, alpha: float) -> np.ndarray:
    """Linear-frequency bin positions (0..n_bins-1) of `n_bins` points equally spaced in warped frequency."""
    w = np.linspace(0, np.pi, n_bins)
    # inverse all-pass warping: omega = w - 2 atan(alpha sin w / (1 + alpha cos w))
    omega = w - 2 * np.arctan(alpha * np.sin(w) / (1 + alpha * np.cos(w)))
    return omega / np.pi * (n_bins - 1)


def interp_matrix(positions: np.ndarray, n: int) -> np.ndarray:
    """Matrix M (n, len(positions)) such that v @ M linearly interpolates v (length n) at `positions`."""
    pos = np.clip(positions, 0, n - 1)
    lo = np.minimum(np.floor(pos).astype(int), n - 2) if n > 1 else np.zeros(len(pos), int)
    frac = pos - lo
    m = np.zeros((n, len(pos)))
    cols = np.arange(len(pos))
    m[lo, cols] += 1 - frac
    if n > 1:
        m[lo + 1, cols] += frac
    return m


class Cepstrum:
    """Mel-cepstrum <-> power envelope for one sample rate and FFT size: two matrix products.

    The cepstrum is the orthonormal DCT-II of the natural log of the power envelope
    sampled at points equally spaced on the all-pass (mel) warped frequency axis.
    """

    def __init__(self, fs: int, n_bins: int, dims: int = 40) -> None:
        self.fs, self.n_bins, self.dims = fs, n_bins, dims
        axis = _warped_axis(n_bins, mel_alpha(fs))
        warp = interp_matrix(axis, n_bins)  # linear bins -> warped points
        basis = dct(np.eye(n_bins), type=2, norm="ortho", axis=-1)[:, :dims]
        self.enc = warp @ basis  # (n_bins, dims)
        unwarp = interp_matrix(np.interp(np.arange(n_bins), axis, np.arange(n_bins)), n_bins)
        self.dec = basis.T @ unwarp  # (dims, n_bins)

    def encode(self, sp: np.ndarray) -> np.ndarray:
        return np.log(np.maximum(sp, 1e-16)) @ self.enc

    def decode(self, mc: np.ndarray) -> np.ndarray:
        return np.exp(mc[:, : self.dims] @ self.dec[: mc.shape[1]])


@lru_cache(maxsize=8)
def cepstrum(fs: int, n_bins: int, dims: int = 40) -> Cepstrum:
    return Cepstrum(fs, n_bins, dims)


def warp_envelope(sp: np.ndarray, ratio: float) -> np.ndarray:
    """Stretch an envelope along frequency: formants at f move to f * ratio (log-domain interpolation)."""
    n = sp.shape[1]
    return np.exp(np.log(np.maximum(sp, 1e-16)) @ interp_matrix(np.arange(n) / ratio, n))


def fill_band(sp: np.ndarray, speech: np.ndarray, margin: int = 3) -> tuple[np.ndarray, int]:
    """Extend a band-limited envelope (e.g. 16 kHz audio analysed at 24 kHz) flat above its edge.

    Returns the filled envelope and the edge bin (n_bins when the input is full band).
    """
    n = sp.shape[1]
    rows = sp[speech] if speech.any() else sp
    ltas = np.log(np.maximum(rows, 1e-16)).mean(axis=0)
    ref = np.median(ltas[: max(2, n // 6)])
    alive = np.nonzero(ltas > ref - 12.0)[0]  # 12 nats ~ 52 dB below the low band
    edge = int(alive[-1]) + 1 if len(alive) else n
    if edge >= n - margin:
        return sp, n
    cut = max(1, edge - margin)
    out = sp.copy()
    out[:, cut:] = sp[:, cut - 1 : cut]
    return out, edge


def lf0_stats(f0: np.ndarray) -> tuple[float, float, int]:
    """Mean and standard deviation of log-F0 over voiced frames, and their count."""
    v = f0[f0 > 0]
    if len(v) == 0:
        return 0.0, 0.0, 0
    lf = np.log(v)
    return float(lf.mean()), float(lf.std()), int(len(v))


