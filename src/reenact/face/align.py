"""Square face crops and pasting an animated crop back into the full frame.

A `Crop` is the similarity (scale + translation) that maps a square box of the
full image onto a `size` x `size` crop, and back. The box is placed around the
landmarks with a margin, as FOMM and LivePortrait crop (face about half the
crop, shifted up to keep the forehead). `PasteBack` composites an animated
crop into the full source image through a feathered face mask, with colour
matching so that a backend's slight colour drift does not show a seam.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class CropConfig:
    """Where the square crop sits around the face."""

    scale: float = 1.9  # crop side / landmark box side
    shift_y: float = -0.08  # move the centre up by this fraction of the side (forehead)


def face_box(landmarks: np.ndarray, config: CropConfig = CropConfig()) -> np.ndarray:
    """(cx, cy, side) of the square crop box for one face's landmarks (or (N, 68, 2) -> (N, 3))."""
    lo = landmarks.min(axis=-2)
    hi = landmarks.max(axis=-2)
    side = (hi - lo).max(axis=-1) * config.scale
    cx = (lo[..., 0] + hi[..., 0]) / 2
    cy = (lo[..., 1] + hi[..., 1]) / 2 + config.shift_y * side
    return np.stack([cx, cy, side], axis=-1).astype(np.float32)


@dataclass(frozen=True)
class Crop:
    """Maps full-image pixels to a size x size crop: crop = s * (full - (x0, y0))."""

    x0: float
    y0: float
    side: float
    size: int

    @classmethod
    def from_box(cls, box: np.ndarray, size: int) -> "Crop":
        cx, cy, side = (float(v) for v in box)
        return cls(cx - side / 2, cy - side / 2, side, size)

    @property
    def scale(self) -> float:
        return self.size / self.side

    @property
    def matrix(self) -> np.ndarray:
        """2x3 affine matrix, full image -> crop."""
        s = self.scale
        return np.array([[s, 0, -s * self.x0], [0, s, -s * self.y0]], np.float32)

    @property
    def inverse(self) -> np.ndarray:
        """2x3 affine matrix, crop -> full image."""
        s = 1.0 / self.scale
        return np.array([[s, 0, self.x0], [0, s, self.y0]], np.float32)

    def to_crop(self, points: np.ndarray) -> np.ndarray:
        return ((points - (self.x0, self.y0)) * self.scale).astype(np.float32)

    def to_full(self, points: np.ndarray) -> np.ndarray:
        return (points / self.scale + (self.x0, self.y0)).astype(np.float32)

    def apply(self, image: np.ndarray) -> np.ndarray:
        """Cut the crop out of `image` (edges beyond the image are replicated)."""
        s = self.scale
        matrix = self.matrix
        if s < 0.75:  # downscale with area averaging first, so warpAffine does not alias
            f = min(1.0, s * 1.25)
            small = cv2.resize(image, None, fx=f, fy=f, interpolation=cv2.INTER_AREA)
            fx = small.shape[1] / image.shape[1]
            fy = small.shape[0] / image.shape[0]
            matrix = matrix @ np.diag([1 / fx, 1 / fy, 1]).astype(np.float32)
            image = small
        return cv2.warpAffine(image, matrix, (self.size, self.size), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_REPLICATE)


def face_mask(landmarks: np.ndarray, size: int, grow: float = 0.25, feather: float = 0.06) -> np.ndarray:
    """Soft mask (size, size) float32 in [0, 1]: the face and forehead, grown and feathered.

    The convex hull of the landmarks plus forehead points mirrored from the
    nose (so the hairline moves with the face), grown by `grow` of the face size
    and blurred by `feather` of the crop size; it fades to zero before the crop
    border, so pasting back never shows the crop's edge.
    """
    lm = landmarks.astype(np.float32)
    nose_top, chin = lm[27], lm[8]
    brows = lm[17:27]
    forehead = brows + (brows - lm[[36, 37, 38, 39, 39, 42, 42, 43, 44, 45]]) * 1.6  # up from eye through brow
    pts = np.concatenate([lm[:17], brows, forehead], 0)
    centre = pts.mean(0)
    extent = np.linalg.norm(chin - nose_top)
    pts = centre + (pts - centre) * (1 + grow * np.clip(np.linalg.norm(pts - centre, axis=1, keepdims=True) / extent, 0.5, 1.5))
    mask = np.zeros((size, size), np.float32)
    cv2.fillConvexPoly(mask, cv2.convexHull(pts.astype(np.int32)), 1.0)
    sigma = max(feather * size, 1.0)
    border = int(np.ceil(2.5 * sigma))
    mask[:border] = 0
    mask[-border:] = 0
    mask[:, :border] = 0
    mask[:, -border:] = 0
    mask = cv2.GaussianBlur(mask, (0, 0), sigma)
    edge = np.minimum(np.arange(size), np.arange(size)[::-1]).astype(np.float32)
    ramp = np.clip(edge / border, 0, 1)
    return mask * ramp[:, None] * ramp[None, :]  # exactly zero on the crop's edge


def crop_mask(size: int, band: float = 0.12) -> np.ndarray:
    """Soft mask (size, size): one inside, a smooth fall to zero over the outer `band` of the crop.

    The default for pasting back: backends move the whole head (hair, ears,
    neck included), so a mask tight on the face would show the still
    portrait's head beside the moving one; the landmark warp fades to identity
    at the crop border, so the crop's own edge never shows.
    """
    edge = np.minimum(np.arange(size), np.arange(size)[::-1]).astype(np.float32) + 0.5
    t = np.clip(edge / max(band * size, 1.0), 0, 1)
    ramp = t * t * (3 - 2 * t)  # smoothstep
    mask = ramp[:, None] * ramp[None, :]
    mask[[0, -1], :] = 0
    mask[:, [0, -1]] = 0
    return mask.astype(np.float32)


class PasteBack:
    """Composite animated crops into a fixed full-size background image.

    `mask` (crop-sized, float in [0, 1]) defaults to `crop_mask`; pass
    `face_mask(landmarks, size)` for backends that change only the face.
    Detail restoration: the crop is worked at 256 or 512 px, so wherever the
    animated crop still equals the portrait's crop (background, clothes, a face
    at rest) the portrait's own full-resolution detail is added back, and only
    what moved shows at the crop's resolution.
    """

    def __init__(self, background: np.ndarray, crop: Crop, colour_match: bool = True,
                 mask: np.ndarray | None = None, restore_detail: bool = True, tolerance: float = 12.0) -> None:
        self.background = background
        self.crop = crop
        self.colour_match = colour_match
        self.tolerance = tolerance
        h, w = background.shape[:2]
        # The crop's footprint in the full image, clipped to it: only this region is touched.
        corners = crop.to_full(np.array([[0, 0], [crop.size, crop.size]], np.float32))
        x0, y0 = np.floor(corners[0]).astype(int)
        x1, y1 = np.ceil(corners[1]).astype(int)
        self.x0, self.y0 = max(x0, 0), max(y0, 0)
        self.x1, self.y1 = min(x1, w), min(y1, h)
        self._matrix = crop.inverse.copy()
        self._matrix[:, 2] -= (self.x0, self.y0)
        self._roi = (self.x1 - self.x0, self.y1 - self.y0)
        soft = crop_mask(crop.size) if mask is None else mask
        self.mask = self._up(soft)[..., None]
        self._mask3 = np.ascontiguousarray(np.repeat(self.mask, 3, axis=2))
        self._bg_roi = background[self.y0:self.y1, self.x0:self.x1].astype(np.float32)
        self._bg_rounding = self._bg_roi + 0.5  # so the final truncation to uint8 rounds
        self._source = crop.apply(background).astype(np.float32)  # what the backend was given
        # Full-resolution detail the crop lost: the portrait minus its crop brought back up.
        self._detail = self._bg_roi - self._up(self._source) if restore_detail and self._roi[0] > 0 else None
        # Colour reference: the source's own crop, on a band just inside the mask edge.
        self._band = (soft > 0.05) & (soft < 0.6)
        self._reference = self._source[self._band].mean(0) if self._band.any() else None
        self._shift = np.zeros(3, np.float32)

    def _up(self, image: np.ndarray) -> np.ndarray:
        """Crop-sized image -> the region of interest of the full frame."""
        return cv2.warpAffine(image, self._matrix, self._roi, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)

    def __call__(self, animated: np.ndarray) -> np.ndarray:
        """The full frame with `animated` (size x size RGB uint8) pasted in."""
        if self.x1 <= self.x0 or self.y1 <= self.y0:
            return self.background.copy()
        crop = animated.astype(np.float32)
        if self.colour_match and self._reference is not None:
            shift = self._reference - crop[self._band].mean(0)
            self._shift = 0.8 * self._shift + 0.2 * shift if self._shift.any() else shift
            crop += self._shift
        result = self._up(crop)
        if self._detail is not None:
            change = cv2.absdiff(crop, self._source).max(axis=2)
            still = cv2.GaussianBlur(np.clip(1.0 - change / self.tolerance, 0, 1), (0, 0), 1.5)
            w = self._up(still)
            result = cv2.add(result, cv2.multiply(self._detail, cv2.merge([w, w, w])))
        blend = cv2.add(self._bg_rounding, cv2.multiply(cv2.subtract(result, self._bg_roi), self._mask3))
        out = self.background.copy()
        out[self.y0:self.y1, self.x0:self.x1] = np.clip(blend, 0, 255).astype(np.uint8)
        return out
