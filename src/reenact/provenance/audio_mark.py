"""Audio watermark: spread-transform dither modulation of STFT tile energies.

The payload's 210 coded bits live in time-frequency tiles of the sound
resampled to 16 kHz (1024-point STFT, hop 32 ms): tiles are `BAND_BINS` bins
(62.5 Hz) wide between 800 and 6400 Hz (the band that survives MP3, AAC and
resampling to 16 kHz and holds less of speech's energy than the low harmonics)
and one hop long. Tiles come in blocks of `BLOCK` frames (0.77 s) that repeat
through the clip; each tile of a block belongs to one coded bit and has a keyed
±1 sign. A bit's *projection* is the mean, over all its tiles in all blocks, of
the tile's whitened log energy (log energy minus the mean of its 5 x 5
neighbourhood, which removes loudness and the spectral envelope) times its sign.

Embedding moves each projection onto a lattice, step*(Z + d) for bit 0 and
step*(Z + d + 1/2) for bit 1, d a keyed offset per bit (dither modulation, so the sound's own projection does
not interfere), by scaling the tiles' magnitudes; quiet tiles take more of the
change than loud ones, which costs far less energy. The gains are found by a few
fixed-point steps on the detector's own statistic, and the largest step of
`LATTICE_STEPS` whose change keeps the SNR at or above `SNR_DB` is used. The
change is rendered at 16 kHz, resampled to the audio's rate and added to every
channel.

Detection resamples to 16 kHz and, for four sub-hop offsets, every frame shift
of the block and every lattice step, turns the projections into soft bits
(-cos(2 pi p / step)) and Viterbi-decodes them; the best-agreeing candidate is
the synchronisation (any trim or codec delay). A mark is found when its tool id
is ours and its soft values agree with the re-encoded payload.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from math import gcd
from pathlib import Path

import numpy as np
from scipy.ndimage import uniform_filter
from scipy.signal import resample_poly

from reenact.errors import ReenactError
from reenact.media.audio import Audio
from reenact.media.container import open_container
from reenact.provenance.payload import N_CODED, Payload, chips, decode, encode, rng

log = logging.getLogger(__name__)

RATE = 16000
N_FFT = 1024
HOP = 512
LOW_HZ, HIGH_HZ = 800, 6400
BAND_BINS = 4
BLOCK = 24  # frames per repeated block
SNR_DB = 32.0
SUBHOPS = 4  # sub-hop offsets tried at detection
AGREEMENT_MIN = 0.85  # soft agreement with the re-encoded codeword; unmarked sound gives about 0.7
ITERATIONS = 4  # fixed-point steps of the embedding
LATTICE_STEPS = (0.1, 0.15, 0.22, 0.33, 0.5, 0.75)  # quantisation steps of a projection, in nepers of tile energy
STEP_GAIN = 1.0  # assumed change of a statistic per unit gain and voiced cell (about 1 after STFT overlap)

_LO_BIN = int(round(LOW_HZ * N_FFT / RATE))
N_BANDS = (int(round(HIGH_HZ * N_FFT / RATE)) - _LO_BIN) // BAND_BINS
_WINDOW = np.hanning(N_FFT + 1)[:N_FFT].astype(np.float64)


def _layout() -> tuple[np.ndarray, np.ndarray]:
    """Keyed ±1 sign of each cell of a block, and the coded bit it carries."""
    n = BLOCK * N_BANDS
    signs = chips("audio-data", n).reshape(BLOCK, N_BANDS)
    index = (rng("audio-index").permutation(n) % N_CODED).reshape(BLOCK, N_BANDS)
    return signs, index


def _resample(x: np.ndarray, rate: int, new_rate: int) -> np.ndarray:
    if rate == new_rate:
        return x
    g = gcd(rate, new_rate)
    return resample_poly(x, new_rate // g, rate // g, axis=-1)


def _stft(x: np.ndarray) -> np.ndarray:
    """(frames, bins) STFT with frames starting at 0, HOP, 2 HOP, ..."""
    n = max(0, (len(x) - N_FFT) // HOP + 1)
    if n == 0:
        return np.zeros((0, N_FFT // 2 + 1), np.complex128)
    idx = np.arange(N_FFT)[None, :] + HOP * np.arange(n)[:, None]
    return np.fft.rfft(x[idx] * _WINDOW, axis=1)


def _istft(spec: np.ndarray, length: int) -> np.ndarray:
    """Overlap-add inverse of `_stft` (Hann analysis, hop N/2: plain sum reconstructs)."""
    out = np.zeros(length + N_FFT)
    frames = np.fft.irfft(spec, n=N_FFT, axis=1)
    for i, frame in enumerate(frames):
        out[i * HOP:i * HOP + N_FFT] += frame
    return out[:length]


def _fold(tiles: np.ndarray, weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sum the tiles of all blocks onto one block; also how many voiced frames each row got."""
    rows = np.arange(len(tiles)) % BLOCK
    folded = np.zeros((BLOCK, N_BANDS))
    np.add.at(folded, rows, tiles)
    count = np.bincount(rows, weights=weight, minlength=BLOCK)
    return folded, count


def _statistics(x16: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each coded bit's projection (mean whitened tile value along its signs) at zero offset, and its voiced-tile count."""
    signs, index = _layout()
    tiles, weight = _tiles(x16)
    return _project(*_fold(tiles, weight), signs, index)


def _project(folded: np.ndarray, count: np.ndarray, signs: np.ndarray, index: np.ndarray):
    cells = np.broadcast_to(count[:, None], folded.shape).ravel()
    n = np.bincount(index.ravel(), weights=cells, minlength=N_CODED) + 1e-9
    return np.bincount(index.ravel(), weights=(folded * signs).ravel(), minlength=N_CODED) / n, n


def _dither() -> np.ndarray:
    """Keyed offset of each coded bit's lattice, as a fraction of the step (so silence or an
    unmarked sound, whose projections sit near 0, does not decode to a clean all-zero codeword)."""
    return rng("audio-dither").random(N_CODED)


def _soft(projection: np.ndarray, step: float) -> np.ndarray:
    """Soft bits of projections quantised on the lattice step*(Z + d) (bit 0) or step*(Z + d + 1/2) (bit 1)."""
    return -np.cos(2 * np.pi * (projection / step - _dither()))


def mark_audio(audio: Audio, payload: Payload, snr_db: float = SNR_DB) -> Audio:
    """The audio with the payload's watermark added (same rate, length and channels).

    Spread-transform dither modulation: each coded bit's projection (the mean
    whitened log energy of its tiles times their signs) is moved to the nearest
    point of the lattice of its bit value, so the sound itself does not
    interfere with the mark. The tile gains that do so are found by a few
    fixed-point steps on the detector's own statistic. The largest lattice step
    of `STEPS_DB` whose change fits the `snr_db` budget is used.
    """
    mono16 = _resample(audio.mono().astype(np.float64), audio.sample_rate, RATE)
    spec = _stft(mono16)
    if len(spec) < BLOCK:
        log.warning("audio too short to watermark (%.2f s)", audio.duration)
        return audio
    if not np.any(np.abs(mono16) > 1e-7):  # digital silence: no sound to hide a mark in
        log.info("audio is silent: no audio watermark (the video watermark and manifest remain)")
        return audio
    signs, index = _layout()
    host, _ = _statistics(mono16)
    bit = encode(payload).astype(np.float64)
    budget = float(np.sum(audio.samples.astype(np.float64) ** 2) / audio.channels) * 10 ** (-snr_db / 10)
    budget *= RATE / audio.sample_rate  # the change is rendered at 16 kHz here

    # Each tile's share of its bit's change: more where the tile is quiet (cheaper in energy).
    energy = _band_energy(spec)
    share = np.clip(np.sqrt(np.median(energy[energy > 0]) / np.maximum(energy, 1e-20)), 0.3, 3.0)
    rows = np.arange(len(spec)) % BLOCK
    cell_sign, cell_bit = signs[rows], index[rows]  # (frames, bands)
    share /= np.bincount(cell_bit.ravel(), weights=share.ravel(), minlength=N_CODED)[cell_bit] / \
        np.bincount(cell_bit.ravel(), minlength=N_CODED)[cell_bit]
    delta16 = None
    for step in sorted(LATTICE_STEPS, reverse=True):
        offset = _dither() + bit / 2
        target = step * (np.round(host / step - offset) + offset)
        amount, now = np.zeros(N_CODED), host
        for _ in range(ITERATIONS):
            amount += (target - now) / STEP_GAIN
            gain = np.zeros_like(spec, dtype=np.float64)
            gain[:, _LO_BIN:_LO_BIN + N_BANDS * BAND_BINS] = np.repeat(share * cell_sign * amount[cell_bit], BAND_BINS, axis=1)
            delta16 = _istft(spec * gain, len(mono16))
            now, _ = _statistics(mono16 + delta16)
        if float(delta16 @ delta16) <= budget:
            break
    delta = _resample(delta16, RATE, audio.sample_rate)[: audio.samples.shape[1]]
    delta = np.pad(delta, (0, audio.samples.shape[1] - len(delta)))
    signal = float(np.sqrt(np.mean(audio.samples.astype(np.float64) ** 2)))
    power = float(np.sqrt(np.mean(delta**2)))
    if power > 0 and 20 * np.log10(signal / power) < snr_db:  # keep the promise, even if weaker
        log.info("audio mark: scaled to the %.0f dB budget", snr_db)
        delta *= signal / power * 10 ** (-snr_db / 20)
    log.info("audio mark: lattice step %.3f, SNR %.1f dB", step, 20 * np.log10(signal / max(float(np.sqrt(np.mean(delta**2))), 1e-12)))
    samples = audio.samples + delta[None, :].astype(np.float32)
    return Audio(np.clip(samples, -1.0, 1.0), audio.sample_rate)


def snr(clean: Audio, marked: Audio) -> float:
    a = clean.samples.astype(np.float64)
    d = marked.samples.astype(np.float64) - a
    return float(10 * np.log10(np.sum(a**2) / max(np.sum(d**2), 1e-20)))


@dataclass
class AudioDetection:
    found: bool
    payload: Payload | None
    confidence: float  # soft agreement with the decoded codeword, 0..1
    offset_s: float  # where a block starts
    blocks: float  # how many blocks the clip holds

    def as_dict(self) -> dict:
        return {"found": self.found, "payload": self.payload.hex() if self.payload else None,
                "confidence": round(self.confidence, 3), "offset_s": round(self.offset_s, 3),
                "blocks": round(self.blocks, 1)}


def _band_energy(spec: np.ndarray) -> np.ndarray:
    """(frames, bands) energy of each tile of an STFT."""
    power = np.abs(spec[:, _LO_BIN:_LO_BIN + N_BANDS * BAND_BINS]) ** 2
    return power.reshape(len(spec), N_BANDS, BAND_BINS).sum(axis=2)


def _tiles(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Whitened log energy of each tile (frames, bands) and a weight per frame."""
    band = _band_energy(_stft(x))
    level = np.log(band + 1e-10)
    whitened = level - uniform_filter(level, size=(5, 5), mode="nearest")
    energy = band.sum(axis=1)
    weight = (energy > 1e-4 * max(float(np.median(energy)), 1e-12)).astype(np.float64)
    return whitened * weight[:, None], weight


def detect_samples(x: np.ndarray, rate: int) -> AudioDetection:
    """Look for the watermark in mono samples at any rate.

    Every sub-hop offset and frame shift of the block is decoded; the one whose
    soft values agree best with their decoded codeword is the synchronisation.
    """
    x = _resample(np.asarray(x, np.float64), rate, RATE)
    signs, index = _layout()
    best = None
    for sub in range(SUBHOPS):
        tiles, weight = _tiles(x[sub * HOP // SUBHOPS:])
        if len(tiles) < BLOCK:
            continue
        folded, count = _fold(tiles, weight)
        for shift in range(BLOCK):
            # row r of the block: frames with (t - shift) % BLOCK == r
            projection, _ = _project(np.roll(folded, -shift, axis=0), np.roll(count, -shift), signs, index)
            for step in LATTICE_STEPS:
                payload, agreement = decode(_soft(projection, step))
                score = agreement + (1.0 if payload.ours else 0.0)
                if best is None or score > best[0]:
                    best = (score, payload, agreement, sub, shift, len(tiles) / BLOCK)
    if best is None:
        return AudioDetection(False, None, 0.0, 0.0, 0.0)
    _, payload, agreement, sub, shift, blocks = best
    found = bool(payload.ours and agreement >= AGREEMENT_MIN)
    offset = (sub * HOP / SUBHOPS + shift * HOP) / RATE
    log.info("audio mark: payload %s, agreement %.3f at %.3f s", payload.hex(), agreement, offset)
    return AudioDetection(found, payload if found else None, max(agreement, 0.0), offset, blocks)


def read_mono(path: str | Path) -> tuple[np.ndarray, int]:
    """A file's first audio track as mono float samples, tolerant of damage.

    A packet that fails to decode (a flipped byte, a cut download) becomes
    silence of its duration, so the blocks after it stay in step with those
    before it; `read_audio` would give up on the whole track instead.
    """
    import av

    with open_container(path) as container:
        if not container.streams.audio:
            raise ReenactError("has no audio track", path)
        stream = container.streams.audio[0]
        rate = stream.codec_context.sample_rate or 48000
        resampler = av.AudioResampler(format="fltp", layout="mono", rate=rate)
        chunks, bad = [], 0
        for packet in container.demux(stream):
            try:
                frames = packet.decode()
            except av.error.FFmpegError:
                bad += 1
                if packet.duration and packet.time_base:
                    chunks.append(np.zeros(int(round(packet.duration * packet.time_base * rate)), np.float32))
                continue
            for frame in frames:
                frame.pts = None
                chunks.extend(out.to_ndarray()[0] for out in resampler.resample(frame))
        chunks.extend(out.to_ndarray()[0] for out in resampler.resample(None))
    if bad:
        log.warning("%s: %d audio packets could not be decoded; read as silence", path, bad)
    return (np.concatenate(chunks) if chunks else np.zeros(0, np.float32)), int(rate)


def detect(audio: str | Path | Audio) -> AudioDetection:
    """Look for the watermark in a file's audio track or an `Audio`."""
    if isinstance(audio, Audio):
        return detect_samples(audio.mono(), audio.sample_rate)
    return detect_samples(*read_mono(audio))


def detect_audio(audio: str | Path | Audio) -> tuple[bool, Payload | None, float]:
    """(found, payload, confidence) for a file's audio track or an `Audio`."""
    result = detect(audio)
    return result.found, result.payload, result.confidence
