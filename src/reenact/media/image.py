"""Still images: read any common format as RGB uint8; fit a picture into a frame without cropping."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from reenact.errors import ReenactError


def load_image(path: str | Path, max_side: int = 0) -> np.ndarray:
    """Read an image as RGB uint8, scaled down so its long side is at most `max_side`."""
    path = Path(path)
    if not path.exists():
        raise ReenactError("file not found", path)
    if path.is_dir():
        raise ReenactError("is a folder, expected an image", path)
    data = np.fromfile(path, np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise ReenactError("cannot be read as an image (expected JPEG, PNG, WebP, BMP or TIFF)", path)
    image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    h, w = image.shape[:2]
    if max_side and max(h, w) > max_side:
        s = max_side / max(h, w)
        image = cv2.resize(image, (round(w * s), round(h * s)), interpolation=cv2.INTER_AREA)
    return image


def fit_frame(image: np.ndarray, width: int, height: int, pad: tuple[int, int, int] = (0, 0, 0)) -> np.ndarray:
    """`image` (H, W, 3) scaled to fit inside `width` x `height` (aspect kept), centred, the rest `pad`.

    Study sets give every clip one frame size: a fake's portrait and a real control's frames both go through
    this resize, so neither is cropped and both are scaled alike."""
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
