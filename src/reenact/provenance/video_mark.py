"""Invisible video watermark on luma: a keyed, frame-relative, fine-grained pattern.

Embedding. The payload's 210 coded bits are spread over a G x G grid of chips
(G = 128) defined relative to the frame, so the pattern scales with the picture:
each chip carries one coded bit times a keyed ±1 sign (about 60 chips per coded
bit), and a second keyed grid, the pilot, carries no data and serves to find the
pattern again. The two grids are summed (pilot 20 % of the energy), upsampled to
the frame size with cubic interpolation (a smooth grain about 1/128 of the frame
wide) and added to the luma of every frame: the same value is added to R, G and
B, which changes Y and leaves the chroma alone. A mild texture mask puts 0.6x the
change on flat areas, where grain shows, and up to 1.3x on texture; the field's
RMS is 2.3 grey levels, so PSNR is about 40.8 dB. Every frame carries the same
pattern: this is the redundancy across frames. (Coarser grids survive heavy
downscaling better in principle but are drowned by the picture's own structure;
128 was the best of 32-128 on 512x512 faces under crop + 50 % downscale + CRF 28.)

Detection. Sampled frames are high-passed (luma minus a blur about one chip
wide, divided by its local strength) and averaged: the static pattern adds up
while moving content averages out (the temporal vote, done on soft values). The
average is then matched against the pilot over a small set of candidate crops
(the visible part may be 75-100 % of the original width and height, at any
offset), which also undoes any rescaling because the grid is relative to the
frame. At the best match the chips are read back, despread into 210 soft bits
and Viterbi-decoded. A mark is found when the pilot match is strong, the decoded
tool id is ours and the soft values agree with the re-encoded payload.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from reenact.media.video import iter_frames, probe
from reenact.provenance.payload import N_CODED, Payload, chips, decode, encode, rng

log = logging.getLogger(__name__)

GRID = 128  # chips across the frame, in each direction
CANON = 4 * GRID  # the canonical size the pattern is read back at
PILOT_SHARE = 0.2  # share of the pattern's energy in the pilot
AMPLITUDE = 2.3  # RMS of the luma change, in grey levels (PSNR about 40.9 dB)
RATIOS = np.round(np.arange(0.75, 1.0001, 0.025), 3)  # candidate visible share of width / height
FINE = np.array([-0.01, -0.005, 0.0, 0.005, 0.01])  # refinement steps around the best ratio
PILOT_MIN_Z = 5.0  # pilot match (in null standard deviations) needed to read a mark; content gives 2-4
AGREEMENT_MIN = 0.78  # soft agreement with the re-encoded codeword needed to trust it


def _layout() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The keyed pilot chips, data chip signs and the coded bit each chip carries."""
    n = GRID * GRID
    pilot = chips("video-pilot", n)
    signs = chips("video-data", n)
    index = rng("video-index").permutation(n) % N_CODED
    return pilot, signs, index


def _upsample_matrix(size: int) -> np.ndarray:
    """(size, GRID) matrix: column k is chip k's profile upsampled to `size` pixels."""
    return cv2.resize(np.eye(GRID, dtype=np.float32), (GRID, size), interpolation=cv2.INTER_CUBIC)


def chip_grid(payload: Payload) -> np.ndarray:
    """The GRID x GRID chip values (pilot + data) of a payload, unit RMS."""
    pilot, signs, index = _layout()
    data = signs * (2.0 * encode(payload)[index] - 1.0)
    grid = np.sqrt(PILOT_SHARE) * pilot + np.sqrt(1 - PILOT_SHARE) * data
    return grid.reshape(GRID, GRID).astype(np.float32)


def _luma(frame: np.ndarray) -> np.ndarray:
    f = frame.astype(np.float32)
    return 0.299 * f[..., 0] + 0.587 * f[..., 1] + 0.114 * f[..., 2]


def _texture_mask(frame: np.ndarray, chip: float) -> np.ndarray:
    """Mild perceptual weight, unit RMS: flat areas (where grain shows) get about half of what texture gets."""
    h, w = frame.shape[:2]
    small = cv2.resize(cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY), (max(w // 4, 1), max(h // 4, 1)),
                       interpolation=cv2.INTER_AREA).astype(np.float32)
    detail = np.abs(small - cv2.GaussianBlur(small, (0, 0), max(chip / 4, 0.7)))
    detail = cv2.GaussianBlur(detail, (0, 0), 2.0)
    mask = 0.6 + 0.7 * np.clip(detail / 6.0, 0.0, 1.0)
    # The field has unit RMS and does not depend on the picture, so the mask's RMS sets the change's RMS.
    mask /= max(float(np.sqrt(np.mean(mask * mask))), 1e-6)
    return cv2.resize(mask, (w, h), interpolation=cv2.INTER_LINEAR)


@dataclass
class VideoMarker:
    """Adds the payload's watermark to RGB frames, one at a time (streaming)."""

    payload: Payload
    amplitude: float = AMPLITUDE

    def __post_init__(self) -> None:
        self._grid = chip_grid(self.payload)
        self._field: np.ndarray | None = None

    def field(self, height: int, width: int) -> np.ndarray:
        """The unit-RMS pattern for a frame size (computed once per size)."""
        if self._field is None or self._field.shape != (height, width):
            field = _upsample_matrix(height) @ self._grid @ _upsample_matrix(width).T
            self._field = (field / np.sqrt(np.mean(field**2))).astype(np.float32)
        return self._field

    def mark(self, frame: np.ndarray) -> np.ndarray:
        """The frame (H, W, 3) uint8 RGB with the watermark added to its luma."""
        h, w = frame.shape[:2]
        delta = cv2.multiply(self.field(h, w), _texture_mask(frame, min(h, w) / GRID), scale=self.amplitude)
        # The same change on R, G and B changes Y only; cv2.add rounds and saturates.
        return cv2.add(np.ascontiguousarray(frame), cv2.merge([delta, delta, delta]), dtype=cv2.CV_8U)


def _highpass(y: np.ndarray) -> np.ndarray:
    """Luma minus a blur one chip wide, divided by its local strength (edges count less)."""
    sigma = max(min(y.shape) / GRID, 0.5)
    r = y - cv2.GaussianBlur(y, (0, 0), sigma)
    r = r / np.sqrt(cv2.GaussianBlur(r * r, (0, 0), 2 * sigma) + 1e-3)
    return r / max(float(r.std()), 1e-6)


@dataclass
class VideoDetection:
    found: bool
    payload: Payload | None
    confidence: float  # soft agreement with the decoded codeword, 0..1
    pilot_z: float  # strength of the pilot match
    crop: tuple[float, float, float, float]  # visible part of the original: x, y, width, height (fractions)
    frames: int  # frames read

    def as_dict(self) -> dict:
        return {"found": self.found, "payload": self.payload.hex() if self.payload else None,
                "confidence": round(self.confidence, 3), "pilot_z": round(self.pilot_z, 2),
                "crop": [round(v, 3) for v in self.crop], "frames": self.frames}


def detect_frames(frames) -> VideoDetection:
    """Look for the watermark in an iterable of RGB frames (all of the same size)."""
    total, count = None, 0
    for frame in frames:
        if total is not None and frame.shape[:2] != total.shape:
            continue  # a size change mid-stream: keep the first size
        r = _highpass(_luma(frame))
        total = r if total is None else total + r
        count += 1
    if total is None:
        return VideoDetection(False, None, 0.0, 0.0, (0, 0, 1, 1), 0)
    return _read(total / count, count)


def _match(residual: np.ndarray, template: np.ndarray, rx: float, ry: float) -> tuple:
    """Best offset of the residual, resized as showing (rx, ry) of the original, against the pilot."""
    h, w = int(round(CANON * ry)), int(round(CANON * rx))
    patch = cv2.resize(residual, (w, h), interpolation=cv2.INTER_AREA if w < residual.shape[1] else cv2.INTER_LINEAR)
    score = cv2.matchTemplate(template, patch, cv2.TM_CCORR_NORMED)
    _, peak, _, (ox, oy) = cv2.minMaxLoc(score)
    return peak * GRID * np.sqrt(rx * ry), ox, oy, float(rx), float(ry), patch  # z: in null standard deviations


def _read(residual: np.ndarray, count: int) -> VideoDetection:
    pilot, signs, index = _layout()
    up = _upsample_matrix(CANON)
    template = up @ pilot.reshape(GRID, GRID) @ up.T
    template = _highpass(template.astype(np.float32))
    best = (-np.inf, 0, 0, 1.0, 1.0, None)
    for ry in RATIOS:
        for rx in RATIOS:
            best = max(best, _match(residual, template, rx, ry), key=lambda b: b[0])
    coarse = best  # refine the visible share around the best coarse match
    for ry in coarse[4] + FINE:
        for rx in coarse[3] + FINE:
            if min(rx, ry) > 0.5 and max(rx, ry) <= 1.0:
                best = max(best, _match(residual, template, rx, ry), key=lambda b: b[0])
    z, ox, oy, rx, ry, patch = best
    crop = (ox / CANON, oy / CANON, float(rx), float(ry))
    canvas = np.zeros((CANON, CANON), np.float32)
    cover = np.zeros((CANON, CANON), np.float32)
    canvas[oy:oy + patch.shape[0], ox:ox + patch.shape[1]] = patch
    cover[oy:oy + patch.shape[0], ox:ox + patch.shape[1]] = 1.0
    soft = (up.T @ canvas @ up).ravel()
    weight = (up.T @ cover @ up).ravel()
    soft = soft - pilot * np.dot(soft, pilot) / max(np.dot(pilot * weight, pilot), 1e-6) * weight
    coded = np.bincount(index, weights=soft * signs, minlength=N_CODED)
    coded /= max(float(coded.std()), 1e-9)
    payload, agreement = decode(coded)
    found = bool(z >= PILOT_MIN_Z and payload.ours and agreement >= AGREEMENT_MIN)
    log.info("video mark: pilot z %.1f at crop %s, payload %s, agreement %.3f", z, crop, payload.hex(), agreement)
    return VideoDetection(found, payload if found else None, max(agreement, 0.0), float(z), crop, count)


def sample_frames(path: str | Path, max_frames: int = 48, step: int | None = None):
    """Every `step`-th frame of a video (streamed), at most `max_frames` of them."""
    if step is None:
        step = max(1, probe(path).frame_count // max_frames)
    taken = 0
    for i, frame in enumerate(iter_frames(path)):
        if i % step == 0:
            yield frame
            taken += 1
            if taken >= max_frames:
                return


def detect_video(path: str | Path, max_frames: int = 48) -> tuple[bool, Payload | None, float]:
    """(found, payload, confidence) for a video file's picture."""
    result = detect_frames(sample_frames(path, max_frames))
    return result.found, result.payload, result.confidence


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)
