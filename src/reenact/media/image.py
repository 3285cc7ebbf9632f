"""Still images: read any common format as RGB uint8."""

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
