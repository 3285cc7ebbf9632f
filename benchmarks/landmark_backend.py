"""Per-frame cost of the landmark backend's animate(), by stage, at 256 and 512.

    python benchmarks/landmark_backend.py [--frames 200] [--threads 1]

Uses taylor.png driven by vox_driving2.mp4 from ../shared/assets when present
(landmarks detected once, untimed), else a drawn face with synthetic mouth and
blink motion. Prints milliseconds per frame (median, 90th percentile) for the
motion targets, the spline warp maps, the gaze shift, cv2.remap, the painted lids, the mouth, and the
whole animate() call in batches of 8, then frames/s.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from reenact.animate.base import DriverFrame, SourceFace
from reenact.animate.landmark import LandmarkBackend

SHARED = Path(__file__).resolve().parents[2] / "shared" / "assets"


def real_inputs(n: int):
    from reenact.face.align import Crop, face_box
    from reenact.face.detect import FaceDetector
    from reenact.face.pose import closest_pose
    from reenact.media.video import iter_frames

    det = FaceDetector()
    image = cv2.cvtColor(cv2.imread(str(SHARED / "portraits/taylor.png")), cv2.COLOR_BGR2RGB)
    face = det.detect(image)[0]
    crop = Crop.from_box(face_box(face.landmarks), 256)
    source = SourceFace(crop.apply(image), crop.to_crop(face.landmarks))
    frames = [DriverFrame(i, det.detect(f)[0].landmarks, f)
              for i, f in zip(range(n), iter_frames(SHARED / "drivers/vox_driving2.mp4"))]  # 256x256 crops already
    ref = closest_pose(np.stack([f.landmarks for f in frames]), source.landmarks)
    return source, frames, ref, "taylor.png + vox_driving2.mp4"


def drawn_inputs(n: int):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from test_landmark_backend import FACE, drawn_face, open_mouth

    image = drawn_face(FACE)
    frames = []
    for i in range(n):
        lm = open_mouth(FACE, 8 + 8 * np.sin(i / 3))
        if i % 25 == 0:
            lm[[37, 38, 43, 44]] = lm[[41, 40, 47, 46]] - (0, 1)
        frames.append(DriverFrame(i, lm, drawn_face(lm)))
    return SourceFace(image, FACE), frames, 0, "drawn face (../shared missing)"


def scaled(source: SourceFace, frames: list[DriverFrame], size: int):
    if size == 256:
        return source, frames
    f = size / 256
    src = SourceFace(cv2.resize(source.image, (size, size), interpolation=cv2.INTER_CUBIC), source.landmarks * f)
    return src, [DriverFrame(d.index, d.landmarks * f, cv2.resize(d.image, (size, size))) for d in frames]


def stats(times: list[float]) -> str:
    t = np.array(times) * 1000
    return f"median {np.median(t):6.2f} ms  p90 {np.percentile(t, 90):6.2f} ms"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--threads", type=int, default=0, help="cv2 threads (0: OpenCV's default)")
    args = parser.parse_args()
    if args.threads:
        cv2.setNumThreads(args.threads)
    source, frames, ref, what = real_inputs(args.frames) if SHARED.is_dir() else drawn_inputs(args.frames)
    print(f"inputs: {what}, {len(frames)} frames, reference {ref}; cv2 threads {cv2.getNumThreads()}, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, cores {os.cpu_count()}")
    for size in (256, 512):
        src, drv = scaled(source, frames, size)
        backend = LandmarkBackend(size=size)
        backend.prepare(src, drv[ref])
        stages = {"targets": [], "warp maps": [], "gaze": [], "remap": [], "eyelids": [], "mouth": []}
        limit = backend._threads.limit(limits=1, user_api="blas")  # as animate() does
        for f in drv:
            t0 = time.perf_counter()
            target, extra, a = backend.targets(f.landmarks)
            t1 = time.perf_counter()
            mx, my = backend.warp_map(target, extra)
            t2 = time.perf_counter()
            backend._move_irises(mx, my, target, f)
            t3 = time.perf_counter()
            image = cv2.remap(backend.source, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
            t4 = time.perf_counter()
            backend._paint_lids(image, target, abs(a))
            t5 = time.perf_counter()
            backend._fill_mouth(image, target, f, abs(a))
            t6 = time.perf_counter()
            for k, v in zip(stages, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t6 - t5)):
                stages[k].append(v)
        limit.restore_original_limits()
        whole = []
        for i in range(0, len(drv) - 7, 8):
            t0 = time.perf_counter()
            backend.animate(drv[i:i + 8])
            whole.append((time.perf_counter() - t0) / 8)
        print(f"size {size}:")
        for k, v in stages.items():
            print(f"  {k:10s} {stats(v)}")
        print(f"  animate()  {stats(whole)}  -> {1 / np.median(whole):6.0f} frames/s")


if __name__ == "__main__":
    main()
