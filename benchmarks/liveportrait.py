"""LivePortrait: frames/s end to end and of the networks alone, against the official per-frame loop; peak memory.

    python benchmarks/liveportrait.py [--frames 8] [--dtypes float32,bfloat16] [--checkpoint DIR]
                                      [--driver vox_driving2.mp4] [--portrait taylor.png] [--threads 2]
    python benchmarks/liveportrait.py --memory [--network-frames 16]

Speed (one run, same weights, same machine, same driver frames):
* official loop: what `LivePortraitPipeline.execute` does per driver frame with the source cached, written
  here for our module classes (the same networks as the official ones): batch 1, float32, the spectral
  norm evaluated in every forward, no channels_last, motion extractor -> relative motion -> stitching ->
  warping module -> SPADE generator -> uint8, one frame at a time. Networks only: no cropping, no video.
* ours, networks alone: `Animator` on the same 256 px crops, in batches of 8 (the pipeline's), per --dtypes.
* ours, end to end: `reenact animate --backend liveportrait` as a new process, timed from its start to the
  written file (model loading, decoding, tracking, cropping, networks, paste back, marks, encoding, muxing).
  Frames/s = driver frames / wall time.
The weights are the deterministic test weights saved in the official folder layout unless --checkpoint
gives a real folder (speed does not depend on the values). bfloat16 against float32: max and mean
absolute difference of the networks' 512 px output in [0, 1].

Memory (--memory): peak RSS of a whole `animate` run (a child process) on the first 5 s of
vox_driving1.mp4 and on all of it (65 s). Running LivePortrait's networks on 1,600 frames takes hours on
a 2-core CPU, so in this mode the backend runs its networks for the first --network-frames frames (their
activations are the peak) and hands back the last animated crop for the rest, while everything else
(decoding twice, tracking, cropping, paste back, marks, encoding, muxing) runs on every frame.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

SHARED = Path(__file__).resolve().parents[2] / "shared" / "assets"


def load() -> str:
    return "load average %.1f %.1f %.1f" % os.getloadavg()


def trim(src: Path, dst: Path, frames: int | None = None, seconds: float | None = None) -> Path:
    limit = ["-frames:v", str(frames)] if frames else ["-t", str(seconds)]
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-i", str(src), *limit, "-c:v", "libx264", "-crf", "16",
                    "-c:a", "aac", str(dst)], check=True)
    return dst


def crops(portrait: Path, driver: Path) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """The 256 px source crop and driver crops in LivePortrait's convention (untimed)."""
    from reenact.animate.liveportrait import LivePortraitBackend as B
    from reenact.face.align import Crop, face_box
    from reenact.face.detect import FaceDetector
    from reenact.media.video import iter_frames, probe
    from reenact.pipeline import load_image

    det = FaceDetector()
    image = load_image(portrait, 1280)
    face = det.detect(image)[0]
    src_crop = Crop.from_box(face_box(face.landmarks, B.crop), 256)
    out, lms = [], []
    for frame in iter_frames(driver, probe(driver).fps):
        f = det.detect(frame)[0]
        c = Crop.from_box(face_box(f.landmarks, B.crop), 256)
        out.append(c.apply(frame))
        lms.append(c.to_crop(f.landmarks))
    return src_crop.apply(image), np.stack(out), lms


def official_loop(model, src: np.ndarray, drv: np.ndarray) -> tuple[float, np.ndarray]:
    """The official per-frame loop (source cached, batch 1, float32); returns (seconds, last image)."""
    from reenact.animate import liveportrait as lp

    for m in model.modules():  # the official spectral_norm recomputes the weight in every forward
        if isinstance(m, lp.SNConv2d):
            m.baked = None
    t = time.perf_counter()
    with torch.no_grad():
        i_s = lp.to_tensor([src])
        s_info = lp.kp_info(model.motion_extractor(i_s))
        f_s = model.appearance_feature_extractor(i_s)
        x_s = lp.transform_keypoint(s_info)
        ref = None
        for k in range(len(drv)):
            info = lp.kp_info(model.motion_extractor(lp.to_tensor(drv[k:k + 1])))
            ref = ref or info
            x_d = lp.compose(s_info.kp, lp.relative_motion(s_info, ref, info, "all"))
            delta = model.stitching(torch.cat([x_s.view(1, -1), x_d.view(1, -1)], 1))
            x_d = x_d + delta[:, :63].view(1, 21, 3)
            x_d[..., :2] += delta[:, None, 63:65]
            warped = model.warping_module(f_s, kp_driving=x_d, kp_source=x_s)
            img = model.spade_generator(warped["out"])
            last = lp.to_uint8(img)[0]
    return time.perf_counter() - t, last


def ours(model, src: np.ndarray, drv: np.ndarray, dtype: torch.dtype, batch: int = 8) -> tuple[float, np.ndarray]:
    from reenact.animate import liveportrait as lp

    t = time.perf_counter()
    a = lp.Animator(model, dtype=dtype)
    a.set_source(lp.to_tensor([src]))
    a.set_reference(lp.to_tensor(drv[:1]))
    outs = [a(lp.to_tensor(drv[i:i + batch])) for i in range(0, len(drv), batch)]
    return time.perf_counter() - t, torch.cat(outs).numpy()


def end_to_end(portrait: Path, driver: Path, weights: Path, dtype: str, out: Path, threads: int) -> float:
    cmd = [sys.executable, "-m", "reenact.cli", "animate", str(portrait), str(driver), "-o", str(out),
           "--backend", "liveportrait", "--checkpoint", str(weights), "--dtype", dtype]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    t = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, capture_output=True)
    return time.perf_counter() - t


def memory_child(portrait: str, driver: str, weights: str, out: str, network_frames: int) -> None:
    """In a fresh process: a whole animate run, networks on the first frames only; prints peak RSS (MiB)."""
    from reenact.animate.liveportrait import LivePortraitBackend
    from reenact.pipeline import AnimateConfig, animate

    backend = LivePortraitBackend(checkpoint=weights)
    done, last = 0, None
    animate_batch = backend.animate

    def capped(frames):
        nonlocal done, last
        if done < network_frames:
            last = animate_batch(frames)
            done += len(frames)
            return last
        return np.repeat(last[-1:], len(frames), axis=0)

    backend.animate = capped
    result = animate(portrait, driver, out, AnimateConfig(backend="liveportrait"), backend=backend)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{result.frames} {rss:.0f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--driver", default="vox_driving2.mp4")
    ap.add_argument("--portrait", default="taylor.png")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--memory", action="store_true")
    ap.add_argument("--network-frames", type=int, default=16)
    ap.add_argument("--memory-child", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_child:
        return memory_child(*args.memory_child, args.network_frames)
    from reenact.animate import liveportrait as lp

    torch.set_num_threads(args.threads)
    portrait = SHARED / "portraits" / args.portrait
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        weights = Path(args.checkpoint) if args.checkpoint else lp.save_folder(lp.load_folder("deterministic"),
                                                                              tmp / "weights")
        print(f"torch {torch.__version__}, {args.threads} threads, CPU bf16: "
              f"{torch.backends.mkldnn.is_available()}; {load()}")
        if args.memory:
            full = SHARED / "drivers" / "vox_driving1.mp4"
            for name, driver in [("5 s", trim(full, tmp / "d5.mp4", seconds=5)), ("65 s", full)]:
                t = time.perf_counter()
                res = subprocess.run([sys.executable, __file__, "--network-frames", str(args.network_frames),
                                      "--memory-child", str(portrait), str(driver), str(weights),
                                      str(tmp / "m.mp4")], check=True, capture_output=True, text=True)
                frames, rss = res.stdout.split()[-2:]
                print(f"memory {name} driver: {frames} frames, peak RSS {rss} MiB, "
                      f"{time.perf_counter() - t:.0f} s; {load()}")
            return
        driver = trim(SHARED / "drivers" / args.driver, tmp / "driver.mp4", frames=args.frames)
        src, drv, _ = crops(portrait, driver)
        n = len(drv)
        model = lp.load_folder(weights)
        sec, _ = official_loop(model, src, drv)
        print(f"official loop (networks, batch 1, float32): {n / sec:.3f} frames/s ({sec:.1f} s); {load()}")
        base = n / sec
        images = {}
        for name in args.dtypes.split(","):
            dtype = lp.parse_dtype(name, "cpu")
            sec, images[name] = ours(lp.load_folder(weights), src, drv, dtype)
            print(f"ours, networks alone ({name}, batch 8): {n / sec:.3f} frames/s ({sec:.1f} s), "
                  f"{n / sec / base:.2f}x; {load()}")
            sec = end_to_end(portrait, driver, weights, name, tmp / f"e2e_{name}.mp4", args.threads)
            print(f"ours, end to end ({name}): {n / sec:.3f} frames/s ({sec:.1f} s incl. process start and model "
                  f"load), {n / sec / base:.2f}x the official loop; {load()}")
        if "float32" in images and "bfloat16" in images:
            d = np.abs(images["float32"] - images["bfloat16"])
            print(f"bfloat16 vs float32 network output ([0, 1]): max {d.max():.4f}, mean {d.mean():.5f}")


if __name__ == "__main__":
    main()
