"""Frames to look at: a portrait, a driver's frames and the output's, side by side, one row per frame.

    python benchmarks/landmark_frames.py macron.png vox_driving2.mp4 220 146 103 -o after.png
    PYTHONPATH=../wt-before/src python benchmarks/landmark_frames.py macron.png vox_driving2.mp4 220 146 103 -o before.png
    python benchmarks/landmark_frames.py --combine before.png after.png -o docs/img/landmark_macron.jpg

Each row: the portrait's face, the driver's face at that frame, the output's face at that frame
(`reenact animate` with its defaults and a fixed watermark id), each cropped around the face that
dlib finds and scaled to 128 px. `--combine A B` keeps A's rows and appends B's last column, so
a row reads portrait, driver, before, after. Names are looked up in ../shared/assets.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

ASSETS = Path(__file__).resolve().parents[2] / "shared" / "assets"
TILE = 128
OUTPUT_ID = "5e1ec7ed-0000-4000-8000-000000000018"


def face_tile(image: np.ndarray, detector) -> np.ndarray:
    """The largest face, a square 1.8x its landmarks' extent, at TILE px (the whole image if none)."""
    faces = detector.detect(image)
    if not faces:
        crop = image
    else:
        lm = faces[0].landmarks
        centre = (lm.min(0) + lm.max(0)) / 2
        half = 0.9 * float((lm.max(0) - lm.min(0)).max())
        x0, y0 = np.maximum(np.round(centre - half).astype(int), 0)
        x1, y1 = np.round(centre + half).astype(int)
        crop = image[y0:y1, x0:x1]
    return cv2.resize(crop, (TILE, TILE), interpolation=cv2.INTER_AREA)


def grid(portrait: Path, driver: Path, frames: list[int]) -> np.ndarray:
    from reenact.face.detect import FaceDetector
    from reenact.media.image import load_image
    from reenact.media.video import iter_frames, probe
    from reenact.pipeline import AnimateConfig, animate

    detector = FaceDetector()
    fps = float(probe(driver).fps)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.mp4"
        animate(portrait, driver, out, AnimateConfig(duration=(max(frames) + 1.5) / fps, output_id=OUTPUT_ID))
        wanted = set(frames)
        drv = {i: f for i, f in enumerate(iter_frames(driver)) if i in wanted and i <= max(frames)}
        outs = {i: f for i, f in enumerate(iter_frames(out)) if i in wanted}
    face = face_tile(load_image(portrait), detector)
    rows = [np.concatenate([face, face_tile(drv[i], detector), face_tile(outs[i], detector)], 1) for i in frames]
    return np.concatenate(rows, 0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("args", nargs="*", help="PORTRAIT DRIVER FRAME [FRAME ...]")
    parser.add_argument("--combine", nargs=2, type=Path, metavar=("BEFORE", "AFTER"))
    parser.add_argument("-o", "--output", type=Path, required=True)
    args = parser.parse_args()
    if args.combine:
        a, b = (cv2.imread(str(p)) for p in args.combine)
        image = np.concatenate([a, b[:, -TILE:]], 1)
    else:
        if len(args.args) < 3:
            parser.error("give PORTRAIT DRIVER FRAME [FRAME ...] or --combine")
        portrait, driver = (ASSETS / sub / name if not Path(name).exists() else Path(name)
                            for sub, name in (("portraits", args.args[0]), ("drivers", args.args[1])))
        image = cv2.cvtColor(grid(portrait, driver, [int(f) for f in args.args[2:]]), cv2.COLOR_RGB2BGR)
    params = [cv2.IMWRITE_JPEG_QUALITY, 90] if args.output.suffix.lower() in (".jpg", ".jpeg") else []
    cv2.imwrite(str(args.output), image, params)
    print(f"wrote {args.output} ({image.shape[1]}x{image.shape[0]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
