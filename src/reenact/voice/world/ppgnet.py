"""The ``ppg-net`` spectral conversion: a small network from what is said to the target's spectrum.

Input per frame: the driver's phone posteriors (``phonetic.py``) with their neighbours 10-80 ms away,
and its mel-cepstra 1..19, normalised over the utterance, with neighbours 5-40 ms away. Output: the
target's mel-cepstra 1..39 and coded aperiodicity. The network is an MLP with two hidden layers,
trained in seconds on the model's pool of target frames. Two of them, from different seeds, are trained
side by side (one per core) and their outputs averaged: the seed moved a single network's WER by
several points, and the pair is more intelligible than either (docs/voice.md).

Trained on the target alone, the cepstral input would let the network copy its input. So every clip of
the pool is also shown frequency-warped by a random ratio (``warp_range``), which moves the formants as
a longer or shorter vocal tract would: the network learns to map any such speaker's cepstra, with the
posteriors, back to the target's. This is speaker augmentation; the posteriors alone (PPG-VC, Sun et al.
2016) lose the words the phone model misrecognises, the cepstra alone the target's timbre.

Its output is an average over the target's frames, so it is less varied than real speech; ``gv`` scales
each coefficient's spread over the utterance halfway back to the target's (global variance).

The forward pass is numpy, so conversion does not import torch; training does.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
from scipy.special import erf

from reenact.threads import torch_threads
from reenact.voice.world import analysis as F
from reenact.voice.world.phonetic import context_rows

log = logging.getLogger(__name__)

CEP_DIMS = 20  # mel-cepstra 1..CEP_DIMS-1 are the acoustic input
CEP_CONTEXT = (1, 2, 4, 8)  # frames (5 ms) either side
PPG_CONTEXT = (2, 4, 6, 9, 12, 16)


@dataclass
class NetConfig:
    nets: int = 2  # members of the ensemble, trained side by side on two threads; their outputs are averaged
    hidden: int = 256
    epochs: int = 8
    copies: int = 3  # the pool once as it is and copies-1 times warped
    warp_range: tuple[float, float] = (0.75, 1.05)  # frequency-warp ratios of the augmented copies
    gv: float = 0.5  # 0: the network's output; 1: each coefficient's spread set to the target's
    lr: float = 2e-3
    batch: int = 512
    seed: int = 0


def normalised_cepstra(mc: np.ndarray, segment: np.ndarray | None = None) -> np.ndarray:
    """Cepstra 1..CEP_DIMS-1 with zero mean and unit variance per segment (clip or utterance)."""
    c = mc[:, 1:CEP_DIMS].astype(np.float64)
    if segment is None:
        segment = np.zeros(len(c), np.int64)
    out = np.empty(c.shape, np.float32)
    for s in np.unique(segment):
        rows = segment == s
        out[rows] = (c[rows] - c[rows].mean(axis=0)) / (c[rows].std(axis=0) + 1e-3)
    return out


def input_width(n_phones: int) -> int:
    """Columns of an input row: cepstra and posteriors, each with its context, and the voicing flag."""
    return (CEP_DIMS - 1) * (1 + 2 * len(CEP_CONTEXT)) + n_phones * (1 + 2 * len(PPG_CONTEXT)) + 1


def inputs(ncep: np.ndarray, post: np.ndarray, voiced: np.ndarray, segment: np.ndarray | None = None,
           out: np.ndarray | None = None, rows: np.ndarray | None = None) -> np.ndarray:
    """Network input rows: normalised cepstra and posteriors, each with its context (``context_stack``), and
    the voicing flag; only for the frames `rows` when given (conversion needs the speech frames). Written
    block by block into `out` when given (training fills a float16 array)."""
    blocks = ((ncep.astype(np.float32), CEP_CONTEXT), (post.astype(np.float32), PPG_CONTEXT))
    if out is None:
        out = np.empty((len(ncep) if rows is None else len(rows), input_width(post.shape[1])), np.float32)
    col = 0
    for g, context in blocks:
        for j, w in context_rows(len(g), context, segment):
            src = g if rows is None and w == 1.0 else g[j if rows is None else j[rows]]
            out[:, col:col + g.shape[1]] = src if w == 1.0 else w * src
            col += g.shape[1]
    out[:, col] = voiced if rows is None else voiced[rows]
    return out


def warp_matrix(cep: F.Cepstrum, ratio: float) -> np.ndarray:
    """(dims, dims) matrix that frequency-warps mel-cepstra by `ratio` (formants at f move to f * ratio)."""
    n = cep.n_bins
    return cep.dec @ F.interp_matrix(np.arange(n) / ratio, n) @ cep.enc


def augmented(mc: np.ndarray, post: np.ndarray, voiced: np.ndarray, clip: np.ndarray, cep: F.Cepstrum,
              config: NetConfig, seed: int) -> np.ndarray:
    """Input rows of the pool, `config.copies` times: as it is, then warped by a random ratio per clip
    (one ratio per clip, as one speaker would have). float16, to halve the largest array of training."""
    rng = np.random.default_rng(seed)
    clips, clip_index = np.unique(clip, return_inverse=True)
    x = np.empty((config.copies * len(mc), input_width(post.shape[1])), np.float16)
    for copy in range(config.copies):
        warped = mc
        if copy > 0:
            grid = np.round(rng.uniform(*config.warp_range, size=len(clips)), 2)
            warped = np.empty_like(mc)
            for r in np.unique(grid):
                sel = grid[clip_index] == r
                warped[sel] = mc[sel] @ warp_matrix(cep, float(r)).astype(np.float32)
        inputs(normalised_cepstra(warped, clip), post, voiced, clip, out=x[copy * len(mc): (copy + 1) * len(mc)])
    return x


def _moments(x: np.ndarray, chunk: int = 32768) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation (+1e-3) of each column, in float64 over row chunks: x.std() would make
    a float64 copy of the whole array (2 GB for one member's inputs)."""
    total, squares = np.zeros(x.shape[1]), np.zeros(x.shape[1])
    for i in range(0, len(x), chunk):
        part = x[i:i + chunk].astype(np.float64)
        total += part.sum(axis=0)
        squares += np.square(part).sum(axis=0)
    mean = total / len(x)
    std = np.sqrt(np.maximum(squares / len(x) - mean**2, 0.0)) + 1e-3
    return mean.astype(np.float32), std.astype(np.float32)


def _fit(net, x: np.ndarray, y: np.ndarray, config: NetConfig, seed: int) -> dict[str, np.ndarray]:
    """Train one member on input rows `x` (float16) and targets `y`; returns its weights and normalisation."""
    import torch

    x_mean, x_std = _moments(x)
    y_mean, y_std = y.mean(axis=0), y.std(axis=0) + 1e-3
    xt, yt = torch.from_numpy(x), torch.from_numpy((y - y_mean) / y_std)
    mean, std = torch.from_numpy(x_mean), torch.from_numpy(x_std)
    gen = torch.Generator().manual_seed(seed)
    n = len(xt)
    per_epoch = max(1, n // config.batch)
    opt = torch.optim.AdamW(net.parameters(), config.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, config.lr, total_steps=config.epochs * per_epoch)
    for epoch in range(config.epochs):
        order = torch.randperm(n, generator=gen)
        total = 0.0
        for i in range(per_epoch):
            rows = order[i * config.batch: (i + 1) * config.batch]
            loss = torch.nn.functional.mse_loss(net((xt[rows].float() - mean) / std), yt[rows])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item()
        log.debug("ppg-net member %d, epoch %d: loss %.3f", seed, epoch, total / per_epoch)
    out = {name.replace(".", "_"): p.detach().numpy().astype(np.float32) for name, p in net.state_dict().items()}
    return {**out, "x_mean": x_mean, "x_std": x_std, "y_mean": y_mean, "y_std": y_std}


def train(mc: np.ndarray, ap: np.ndarray, post: np.ndarray, voiced: np.ndarray, clip: np.ndarray,
          cep: F.Cepstrum, config: NetConfig | None = None) -> dict[str, np.ndarray]:
    """Train `config.nets` members on the pool (target frames of whole clips), two at a time on two threads,
    each with its own seed (initial weights, warps, batch order). Returns the tensors to store: prefix
    ``net_``, each member's stacked along the first axis."""
    import torch

    config = config or NetConfig()
    start = time.perf_counter()
    mc = mc.astype(np.float32)
    y = np.concatenate([mc[:, 1:], ap], axis=1).astype(np.float32)
    seeds = [config.seed + i for i in range(config.nets)]
    n_in = input_width(post.shape[1])
    nets = []
    state = torch.random.get_rng_state()
    for seed in seeds:  # initial weights from the global generator: made here, not in the threads
        torch.manual_seed(seed)
        nets.append(torch.nn.Sequential(torch.nn.Linear(n_in, config.hidden), torch.nn.GELU(),
                                        torch.nn.Linear(config.hidden, config.hidden), torch.nn.GELU(),
                                        torch.nn.Linear(config.hidden, y.shape[1])))
    torch.random.set_rng_state(state)

    def member(i: int) -> dict[str, np.ndarray]:
        x = augmented(mc, post, voiced, clip, cep, config, seeds[i])
        return _fit(nets[i], x, np.tile(y, (config.copies, 1)), config, seeds[i])

    from concurrent.futures import ThreadPoolExecutor

    with torch_threads(1), ThreadPoolExecutor(min(2, config.nets)) as pool:  # one core per member: small
        members = list(pool.map(member, range(config.nets)))  # products; torch releases the GIL
    tensors = {f"net_{k}": np.stack([m[k] for m in members]) for k in members[0]}
    tensors["net_y_spread"] = y.std(axis=0)
    log.info("ppg-net: %d networks trained on %d frames (x%d) in %.1f s", config.nets, len(mc), config.copies,
             time.perf_counter() - start)
    return tensors


def _gelu(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1 + erf(x / np.sqrt(2)))


def forward(t: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """The networks on input rows `x`, averaged; returns target cepstra 1..39 and coded aperiodicity per row."""
    out = 0.0
    members = len(t["net_0_weight"])
    for m in range(members):
        h = (x - t["net_x_mean"][m]) / t["net_x_std"][m]
        for i in (0, 2):
            h = _gelu(h @ t[f"net_{i}_weight"][m].T + t[f"net_{i}_bias"][m])
        y = h @ t["net_4_weight"][m].T + t["net_4_bias"][m]
        out = out + y * t["net_y_std"][m] + t["net_y_mean"][m]
    return out / members


def convert(t: dict[str, np.ndarray], mc: np.ndarray, post: np.ndarray, voiced: np.ndarray, speech: np.ndarray,
            gv: float) -> np.ndarray:
    """Target cepstra 1..39 and coded aperiodicity for the driver's speech frames.

    `mc`, `post` and `voiced` cover every frame of the utterance; the cepstra are normalised over its
    `speech` frames, and one row is returned per speech frame.
    """
    ncep = np.zeros((len(mc), CEP_DIMS - 1), np.float32)
    ncep[speech] = normalised_cepstra(mc[speech])
    y = forward(t, inputs(ncep, post, voiced, rows=np.flatnonzero(speech)))
    if gv > 0 and len(y) > 1:
        mean, spread = y.mean(axis=0), y.std(axis=0) + 1e-6
        y = mean + (y - mean) * (1 - gv + gv * np.minimum(t["net_y_spread"] / spread, 3))
    return y
