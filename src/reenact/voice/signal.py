"""Signal helpers every voice backend shares: decoding to mono, resampling, frame levels, input checks, and
cutting long audio in pauses (streamed, so a long input is never whole in memory)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from reenact.errors import ReenactError
from reenact.media.audio import Audio, read_audio


def load_mono(path: str | Path, sample_rate: int) -> np.ndarray:
    """Decode any file FFmpeg reads (video too) to mono float64 at `sample_rate`."""
    audio = read_audio(path, sample_rate=sample_rate, mono=True)
    return audio.mono().astype(np.float64)


def to_mono(audio: Audio, sample_rate: int) -> np.ndarray:
    """Downmix and resample an in-memory `Audio` to mono float64."""
    x = audio.mono().astype(np.float64)
    if audio.sample_rate != sample_rate:
        x = resample(x, audio.sample_rate, sample_rate)
    return x


def resample(x: np.ndarray, rate: int, new_rate: int) -> np.ndarray:
    """Polyphase resampling (scipy's resample_poly); a copy of `x` when the rates agree."""
    from scipy.signal import resample_poly

    if int(rate) == int(new_rate):
        return np.array(x, copy=True)
    g = np.gcd(int(rate), int(new_rate))
    return resample_poly(x, new_rate // g, rate // g)


def quiet_frame(db: np.ndarray, lo: int, hi: int, near: float) -> int:
    """The frame of `db[lo:hi]` nearest `near` among those within 6 dB of the quietest there."""
    quiet = np.flatnonzero(db[lo:hi] <= db[lo:hi].min() + 6.0) + lo
    return int(quiet[np.argmin(np.abs(quiet - near))])


def pause_pieces(blocks: Iterable[np.ndarray], sr: int, seconds: float) -> Iterator[np.ndarray]:
    """Join mono `blocks` and cut them, as they come, into pieces of about `seconds` (0.75-1.25 times) cut in
    pauses (the 20 ms frame nearest the mark among those within 6 dB of the quietest there). Holds at most
    1.5 `seconds` of audio: a long input is never in memory whole. The last piece is the rest (up to 1.5
    `seconds`); an input of at most 1.5 `seconds` is one piece."""
    held: list[np.ndarray] = []
    size, limit, mark = 0, int(1.5 * seconds * sr), seconds * 100  # mark: in 10 ms frames
    for block in blocks:
        held.append(np.asarray(block))
        size += len(held[-1])
        while size > limit:
            x = np.concatenate(held)
            db = frame_db(x[: int(1.3 * seconds * sr)], sr)  # 20 ms frames every 10 ms
            j = quiet_frame(db, int(0.75 * mark), int(1.25 * mark), mark)
            cut = int(round((j * 10 + 10) * sr / 1000))  # centre of the 20 ms frame
            yield x[:cut]
            held, size = [x[cut:]], len(x) - cut
    if size:
        yield np.concatenate(held)


def take_pieces(blocks: Iterable[np.ndarray], sizes: list[int]) -> Iterator[np.ndarray]:
    """Join `blocks` and cut them into pieces of `sizes` samples (as `pause_pieces` found them on a first
    read of the same input); a short last piece is padded with zeros."""
    held: list[np.ndarray] = []
    size = 0
    it = iter(blocks)
    for n in sizes:
        while size < n:
            block = next(it, None)
            if block is None:
                break
            held.append(np.asarray(block))
            size += len(held[-1])
        x = np.concatenate(held) if held else np.zeros(0)
        piece = x[:n]
        yield np.pad(piece, (0, n - len(piece)))
        held, size = [x[n:]], max(0, len(x) - n)


def frame_db(x: np.ndarray, sr: int, frame: float = 0.02, hop: float = 0.01) -> np.ndarray:
    """RMS level in dBFS of frames of `frame` seconds every `hop` seconds."""
    n, h = max(1, int(sr * frame)), max(1, int(sr * hop))
    if len(x) < n:
        x = np.pad(x, (0, n - len(x)))
    count = 1 + (len(x) - n) // h
    idx = np.arange(n)[None, :] + h * np.arange(count)[:, None]
    rms = np.sqrt(np.mean(np.square(x[idx]), axis=1) + 1e-12)
    return 20 * np.log10(rms + 1e-10)


def check_signal(x: np.ndarray, sr: int, path: Path | None, min_seconds: float = 0.05) -> None:
    if not np.all(np.isfinite(x)):
        raise ReenactError("audio contains NaN or infinite samples", path)
    if len(x) < sr * min_seconds:
        raise ReenactError(f"audio is too short ({len(x) / sr * 1000:.0f} ms; at least {min_seconds * 1000:.0f} ms)", path)
