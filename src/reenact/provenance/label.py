"""The visible disclosure: an "AI-generated" badge drawn in a corner of each frame."""

from __future__ import annotations

import cv2
import numpy as np

LABEL = "AI-generated"


def draw_label(frame: np.ndarray, text: str = LABEL, corner: str = "bottom-right", opacity: float = 0.6) -> np.ndarray:
    """A copy of the RGB frame with `text` in a semi-transparent dark box in a corner.

    Sizes follow the frame (the text is about 1/28 of its shorter side high), so
    the badge reads the same at 256 px and at 1080 p.
    """
    h, w = frame.shape[:2]
    scale = max(min(h, w) / 28, 6) / 22  # Hershey simplex is about 22 px high at scale 1
    thickness = max(1, int(round(scale * 1.6)))
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    pad = max(2, int(round(th * 0.45)))
    bw, bh = min(tw + 2 * pad, w), min(th + base + 2 * pad, h)
    margin = max(2, int(round(min(h, w) * 0.02)))
    x0 = margin if "left" in corner else max(w - bw - margin, 0)
    y0 = margin if "top" in corner else max(h - bh - margin, 0)
    out = frame.copy()
    box = out[y0:y0 + bh, x0:x0 + bw].astype(np.float32)
    out[y0:y0 + bh, x0:x0 + bw] = (box * (1 - opacity) + 20 * opacity).astype(np.uint8)
    cv2.putText(out, text, (x0 + pad, y0 + pad + th), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255),
                thickness, cv2.LINE_AA)
    return out
