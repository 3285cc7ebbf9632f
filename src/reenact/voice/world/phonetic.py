"""Phonetic posteriorgrams from pocketsphinx's bundled acoustic model, computed in numpy.

pocketsphinx ships (inside its wheel) a semi-continuous English model: 42 context-independent
phones, each with a codebook of 128 diagonal Gaussians over three 13-dimensional streams
(cepstra, deltas, double deltas), and senones that are mixtures of their phone's codebook.
This module reproduces the Sphinx MFCC front end of that model (``feat.params``: 16 kHz, 25
mel filters 130-6800 Hz, unitary DCT, lifter 22, batch CMN, ``1s_c_d_dd`` deltas), scores the
context-independent senones (3 states per phone), and returns per frame the log posteriors of
the phones: a speaker-independent-ish description of *what* is said, used as the query space of
the ``ppg`` voice conversion method. No weights are downloaded: they come with pocketsphinx.
"""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from reenact.errors import ReenactError

log = logging.getLogger(__name__)

RATE = 16000
HOP = 160  # 10 ms
WINDOW = 410  # 25.625 ms
NFFT = 512
FILLERS = ("+NSN+", "+SPN+")


def model_dir() -> Path:
    try:
        from pocketsphinx import get_model_path
    except ImportError:  # pragma: no cover - pocketsphinx is a dependency
        raise ReenactError("pocketsphinx is not installed (it provides the phonetic model)") from None
    return Path(get_model_path()) / "en-us" / "en-us"


def _s3_body(path: Path) -> tuple[bytes, int]:
    data = path.read_bytes()
    end = data.index(b"endhdr\n") + 7
    if struct.unpack("<I", data[end : end + 4])[0] != 0x11223344:
        raise ReenactError("unsupported byte order in Sphinx model file", path)
    return data, end + 4


def read_gauden(path: Path) -> np.ndarray:
    """Sphinx-3 Gaussian parameter file -> array (codebooks, streams, densities, stream length)."""
    data, o = _s3_body(path)
    n_cb, n_feat, n_den = struct.unpack("<3i", data[o : o + 12])
    veclen = struct.unpack(f"<{n_feat}i", data[o + 12 : o + 12 + 4 * n_feat])
    o += 16 + 4 * n_feat
    if len(set(veclen)) != 1:
        raise ReenactError("unsupported Sphinx Gaussian file (unequal streams)", path)
    x = np.frombuffer(data, "<f4", n_cb * n_feat * n_den * veclen[0], o)
    return x.reshape(n_cb, n_feat, n_den, veclen[0]).astype(np.float64)


def read_sendump(path: Path, n_feat: int, n_den: int) -> np.ndarray:
    """Compressed mixture weights -> -log weights in units of 1.0001^1024, array (streams, densities, senones)."""
    data = path.read_bytes()
    o = 0
    header = {}
    while True:
        n = struct.unpack("<i", data[o : o + 4])[0]
        o += 4
        if n == 0:
            break
        key, _, value = data[o : o + n - 1].decode("latin-1").partition(" ")
        header[key] = value
        o += n
    if int(header.get("cluster_count", "0")) != 0:
        raise ReenactError("unsupported Sphinx sendump (clustered weights)", path)
    rows, cols = struct.unpack("<2i", data[o : o + 8])
    o += 8
    if rows != n_den:
        raise ReenactError(f"sendump has {rows} densities, expected {n_den}", path)
    return np.frombuffer(data, np.uint8, n_feat * rows * cols, o).reshape(n_feat, rows, cols)


def read_mdef_ci(path: Path) -> tuple[list[str], np.ndarray]:
    """Binary model definition -> CI phone names and their senones (n_ciphone, n_states)."""
    data = path.read_bytes()
    if data[:4] != b"BMDF":
        raise ReenactError("unsupported Sphinx model definition (not binary)", path)
    hdr_len = struct.unpack("<i", data[8:12])[0]
    o = 12 + hdr_len
    n_ci, n_phone, n_state, _n_ci_sen, _n_sen, _n_tmat, _n_sseq, _n_ctx, n_tree, _sil = struct.unpack(
        "<10i", data[o : o + 40])
    o += 40
    names, p = [], o
    for _ in range(n_ci):
        e = data.index(b"\0", p)
        names.append(data[p:e].decode())
        p = e + 1
    o += (p - o + 3) // 4 * 4
    o += 8 * n_tree
    phones = np.frombuffer(data, "<i4", 3 * n_phone, o).reshape(n_phone, 3)
    o += 12 * n_phone
    size = struct.unpack("<i", data[o : o + 4])[0]
    sseq = np.frombuffer(data, "<u2", size, o + 4).reshape(-1, n_state)
    return names, sseq[phones[:n_ci, 0]].astype(int)


@dataclass
class PhoneModel:
    """Context-independent states of the Sphinx model, ready for scoring."""

    names: list[str]  # CI phones
    senones: np.ndarray  # (n_ci, n_states) senone ids
    mean: np.ndarray  # (n_ci, 3, 128, 13)
    ivar: np.ndarray  # (n_ci, 3, 128, 13)
    gconst: np.ndarray  # (n_ci, 3, 128): -0.5 sum log(2 pi var)
    logw: np.ndarray  # (n_ci, n_states, 3, 128) natural-log mixture weights

    @property
    def weights(self) -> np.ndarray:
        """Mixture weights as (n_ci, 3, 128, n_states)."""
        return np.exp(self.logw).transpose(0, 2, 3, 1).astype(np.float32)

    @property
    def phones(self) -> list[str]:
        """Phones reported in posteriorgrams (the fillers are merged into silence)."""
        return [n for n in self.names if n not in FILLERS]


@lru_cache(maxsize=2)
def load_phone_model(directory: str | None = None) -> PhoneModel:
    d = Path(directory) if directory else model_dir()
    for name in ("means", "variances", "sendump", "mdef", "feat.params"):
        if not (d / name).is_file():
            raise ReenactError(f"Sphinx acoustic model file {name} not found", d)
    params = (d / "feat.params").read_text()
    if "ptm" not in params or "1s_c_d_dd" not in params:
        raise ReenactError("unsupported Sphinx acoustic model (expects a PTM 1s_c_d_dd model)", d)
    mean, var = read_gauden(d / "means"), read_gauden(d / "variances")
    var = np.maximum(var, 1e-4)  # pocketsphinx's -varfloor
    names, senones = read_mdef_ci(d / "mdef")
    n_ci, n_feat, n_den, _ = mean.shape
    q = read_sendump(d / "sendump", n_feat, n_den)  # (3, 128, n_sen)
    logw = -q[:, :, senones].astype(np.float64) * 1024 * np.log(1.0001)  # (3, 128, n_ci, n_states)
    logw = logw.transpose(2, 3, 0, 1)
    return PhoneModel(names, senones, mean, 1 / var, -0.5 * np.log(2 * np.pi * var).sum(-1), logw)


# ---------------------------------------------------------------- front end


@lru_cache(maxsize=2)
def mel_filters(rate: int = RATE, nfft: int = NFFT, nfilt: int = 25, lowerf: float = 130.0,
                upperf: float = 6800.0) -> np.ndarray:
    """Sphinx's triangular mel filters (unit area, edges rounded to DFT points): (nfft//2+1, nfilt)."""
    mel = lambda f: 2595.0 * np.log10(1 + f / 700.0)
    inv = lambda m: 700.0 * (10 ** (m / 2595.0) - 1)
    lo, hi = mel(lowerf), mel(upperf)
    bw = (hi - lo) / (nfilt + 1)
    step = rate / nfft
    hz = np.arange(nfft // 2 + 1) * step
    fb = np.zeros((nfft // 2 + 1, nfilt))
    for i in range(nfilt):
        f = np.array([int(inv(lo + (i + j) * bw) / step + 0.5) * step for j in range(3)])
        sel = (hz >= f[0]) & (hz <= f[2]) & (np.arange(len(hz)) < nfft // 2)
        up = (hz[sel] - f[0]) / (f[1] - f[0]) * 2 / (f[2] - f[0])
        down = (f[2] - hz[sel]) / (f[2] - f[1]) * 2 / (f[2] - f[0])
        fb[sel, i] = np.minimum(up, down)
    return fb


def mfcc(x: np.ndarray, ncep: int = 13, lifter: int = 22) -> np.ndarray:
    """Sphinx MFCCs (before CMN) of 16 kHz float speech in [-1, 1]: (frames, ncep), 100 frames/s."""
    x = np.asarray(x, np.float64) * 32768.0
    y = np.empty_like(x)
    if len(x):
        y[0] = x[0]
        y[1:] = x[1:] - 0.97 * x[:-1]
    n = 1 + (len(y) - WINDOW) // HOP if len(y) >= WINDOW else 0
    if n <= 0:
        return np.zeros((0, ncep))
    idx = np.arange(WINDOW)[None, :] + HOP * np.arange(n)[:, None]
    frames = y[idx] * np.hamming(WINDOW)
    spec = np.abs(np.fft.rfft(frames, NFFT)) ** 2
    logmel = np.log(spec @ mel_filters() + 1e-4)
    nfilt = logmel.shape[1]
    k = np.arange(ncep)[:, None] * (np.arange(nfilt)[None, :] + 0.5) * np.pi / nfilt
    basis = np.cos(k) * np.sqrt(2.0 / nfilt)
    basis[0] = np.sqrt(1.0 / nfilt)
    cep = logmel @ basis.T
    return cep * (1 + lifter / 2 * np.sin(np.arange(ncep) * np.pi / lifter))


def features(cep: np.ndarray) -> np.ndarray:
    """Batch CMN and Sphinx 1s_c_d_dd deltas: (frames, 3, 13)."""
    if len(cep) == 0:
        return np.zeros((0, 3, cep.shape[1]))
    c = cep - cep.mean(axis=0)
    p = np.pad(c, ((3, 3), (0, 0)), mode="edge")
    t = np.arange(len(c)) + 3
    d = p[t + 2] - p[t - 2]
    dd = (p[t + 3] - p[t - 1]) - (p[t + 1] - p[t - 3])
    return np.stack([c, d, dd], axis=1)


def state_loglik(feat: np.ndarray, model: PhoneModel, chunk: int = 1000) -> np.ndarray:
    """Log-likelihood of each CI state (n_ci, n_states) per frame: (frames, n_ci, n_states)."""
    n_ci, n_st = model.senones.shape
    out = np.empty((len(feat), n_ci, n_st))
    m, iv = model.mean, model.ivar  # (ci, 3, 128, 13)
    n_den, dim = m.shape[2], m.shape[3]
    const = (model.gconst - 0.5 * (m * m * iv).sum(-1)).astype(np.float32)  # (ci, 3, 128)
    # per stream: log N = x^2 . (-iv/2) + x . (m iv) + const, as one product with [x^2, x]
    proj = [np.concatenate([-0.5 * iv[:, st], m[:, st] * iv[:, st]], axis=-1).reshape(-1, 2 * dim).T.astype(np.float32)
            for st in range(3)]
    for s in range(0, len(feat), chunk):
        f = feat[s : s + chunk].astype(np.float32)  # (T, 3, 13)
        g = np.empty((len(f), n_ci, 3, n_den), np.float32)
        for st in range(3):  # stream
            x = f[:, st]
            g[:, :, st] = (np.concatenate([x * x, x], axis=1) @ proj[st]).reshape(len(f), n_ci, n_den) + const[:, st]
        # senone (ci, state): sum over streams of log sum_d w_d N_d
        top = g.max(-1, keepdims=True)
        mix = np.matmul(np.exp(g - top).transpose(1, 2, 0, 3), model.weights)  # (ci, 3, T, states)
        out[s : s + chunk] = (np.log(mix + 1e-300) + top.transpose(1, 2, 0, 3)).sum(1).transpose(1, 0, 2)
    return out


def posteriorgram(x16: np.ndarray, model: PhoneModel | None = None, scale: float = 0.1) -> np.ndarray:
    """Per-frame (10 ms) log posteriors of the model's phones (fillers merged into SIL), `scale` flattens them."""
    from threadpoolctl import threadpool_limits

    model = model or load_phone_model()
    feat = features(mfcc(x16))
    if len(feat) == 0:
        return np.zeros((0, len(model.phones)))
    with threadpool_limits(1):  # small matrix products: threads only add overhead, worse on a loaded machine
        ll = state_loglik(feat, model) * scale  # (T, ci, states)
    keep = [i for i, n in enumerate(model.names) if n not in FILLERS]
    sil = model.names.index("SIL")
    ll[:, sil] = np.logaddexp(ll[:, sil], ll[:, [model.names.index(f) for f in FILLERS]].max(axis=1))
    ll = ll[:, keep]
    top = ll.max(axis=(1, 2), keepdims=True)
    phone = np.log(np.exp(ll - top).sum(-1)) + top[..., 0]
    return phone - np.logaddexp.reduce(phone, axis=1, keepdims=True)


def context_rows(n: int, context: tuple[int, ...], segment: np.ndarray | None = None):
    """(row indices, weight) of each block of `context_stack`: the rows themselves (weight 1), then the rows
    `d` frames before and after for each `d` in `context` (weight 0.7), staying inside the same `segment`."""
    idx = np.arange(n)
    yield idx, 1.0
    for d in context:
        for s in (-1, 1):
            j = np.clip(idx + s * d, 0, n - 1)
            if segment is not None:  # stay inside the clip: fall back to the frame itself
                j = np.where(segment[j] == segment, j, idx)
            yield j, 0.7


def context_stack(g: np.ndarray, context: tuple[int, ...], segment: np.ndarray | None = None) -> np.ndarray:
    """Rows of `g` joined by 0.7 times the rows `context` frames before and after (within the same `segment`)."""
    return np.concatenate([g if w == 1.0 else w * g[j] for j, w in context_rows(len(g), context, segment)], axis=1)
