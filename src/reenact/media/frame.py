"""Fit a picture into a frame of a given size without cropping: scaled to fit, centred, padded.

Study sets (reenact.study) give every clip one frame size: a fake's portrait and a
real control's frames go through this same resize, so neither is cropped and both
are scaled by the same interpolation.
"""

from __future__ import annotations

import cv2
import numpy as np


def fit_frame(image: np.ndarray, width: int, height: int, pad: tuple[int, int, int] = (0, 0, 0)) -> np.ndarray:
    """`image` (H, W, 3) scaled to fit inside `width` x `height` (aspect kept), centred, the rest `pad`."""
    h, w = image.shape[:2]
    if (w, h) == (width, height):
        return image
    scale = min(width / w, height / h)
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
    scaled = cv2.resize(image, (new_w, new_h), interpolation=interpolation) if (new_w, new_h) != (w, h) else image
    out = np.empty((height, width, image.shape[2]), image.dtype)
    out[:] = np.asarray(pad, image.dtype)
    x0, y0 = (width - new_w) // 2, (height - new_h) // 2
    out[y0:y0 + new_h, x0:x0 + new_w] = scaled
    return out
