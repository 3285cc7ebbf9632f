"""Benchmark `reenact animate`: frames/s per stage and end to end, peak memory, face measures.

Each case runs `pipeline.animate` in a fresh Python process, which reports its
own timings and peak resident memory (ru_maxrss), so cases do not share caches
or heap. Memory must not grow with the driver's length: the first driver
named `--long` (vox_driving1.mp4, 65 s, by default) is also run on a clip of
its first `--short-seconds` seconds and the two peaks are compared. Each
output is then measured with `reenact.evaluate.face` (identity distance to the
source, mouth-opening correlation with the driver).

    python benchmarks/animate.py                       # shared drivers, obama.jpg, 256, landmark backend
    python benchmarks/animate.py --backend still       # the pipeline around a do-nothing backend
    python benchmarks/animate.py --drivers a.mp4 b.mp4 --source face.jpg --size 512
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "assets"
DRIVERS = [SHARED / "drivers" / name for name in ("liax_driving1.mp4", "vox_driving2.mp4", "vox_driving1.mp4")]
SOURCE = SHARED / "portraits" / "obama.jpg"
STAGES = ("decode", "track", "animate", "paste", "mark", "encode")  # "mark": visible label + watermark


class StillBackend:
    """A stand-in backend that returns the source crop unchanged: times the pipeline around a backend."""

    name = "still"
    needs_driver_images = False

    def __init__(self, size: int = 256, **_) -> None:
        self.size = size
        self.image = None

    def prepare(self, source, reference) -> None:
        self.image = source.image

    def animate(self, frames):
        import numpy as np

        return np.repeat(self.image[None], len(frames), axis=0)


def worker(args: argparse.Namespace) -> None:
    """Run one animation in this (fresh) process and print its figures as one JSON line."""
    from reenact.pipeline import AnimateConfig, animate

    config = AnimateConfig(backend=args.backend, size=args.size)
    backend = StillBackend(args.size) if args.backend == "still" else None
    t = time.perf_counter()
    result = animate(args.source, args.driver, args.output, config, backend=backend)
    wall = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux -> MiB
    encode = encode_alone(args.output, config, args.encode_frames)
    print(json.dumps({"encode_alone": encode, "frames": result.frames, "fps": float(result.fps),
                      "size": list(result.size),
                      "wall": wall, "timings": result.timings, "peak_rss_mib": peak,
                      "missing_frames": result.missing_frames}))


def encode_alone(video: Path, config, limit: int) -> float:
    """Seconds per frame to encode the output's frames with the pipeline's settings, on this thread alone.

    In the pipeline the encoder runs on a worker thread beside the other stages,
    so its own time does not show there (the "encode" stage is only the wait
    for a free slot in its queue).
    """
    from reenact.media.video import VideoWriter, iter_frames

    spent, n = 0.0, 0
    with tempfile.TemporaryDirectory(prefix="reenact-encode-") as tmp:
        writer = VideoWriter(Path(tmp) / "x.mp4", 25, crf=config.crf, preset=config.preset, queue=0)
        for _, frame in zip(range(limit), iter_frames(video)):
            t = time.perf_counter()
            writer.write(frame)
            spent += time.perf_counter() - t
            n += 1
        t = time.perf_counter()
        writer.close()
        spent += time.perf_counter() - t
    return spent / max(n, 1)


def run_case(driver: Path, output: Path, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--worker", "--driver", str(driver), "--output", str(output),
           "--source", str(args.source), "--size", str(args.size), "--backend", args.backend,
           "--encode-frames", str(args.encode_frames)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{driver}: animate failed\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def cut(path: Path, seconds: float, output: Path) -> Path:
    """The first `seconds` of a video, re-encoded (frame-exact, unlike a stream copy)."""
    from reenact.media.video import VideoWriter, iter_frames, probe

    fps = probe(path).fps
    with VideoWriter(output, fps, crf=12) as writer:
        for _, frame in zip(range(round(seconds * fps)), iter_frames(path, fps)):
            writer.write(frame)
    return output


def measure(output: Path, source: Path, driver: Path, samples: int) -> dict:
    from reenact.evaluate.face import evaluate_face

    return evaluate_face(output, source, driver, identity_samples=samples)


def fps(frames: int, seconds: float | None) -> str:
    return "-" if not seconds else f"{frames / seconds:.0f}"


def fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def targets(results: dict, args: argparse.Namespace) -> None:
    """The issue's targets, where this run measured them."""
    lines = []
    for label, r in results.items():
        face = r.get("face") or {}
        ident = (face.get("identity") or {}).get("median")
        mouth = (face.get("motion") or {}).get("mouth_corr")
        if ident is not None:
            lines.append(f"{label}: identity median {ident:.3f} {'<=' if ident <= 0.35 else '>'} 0.35")
        if mouth is not None and label in ("vox_driving2.mp4", "tpsmm_driving.mp4"):
            lines.append(f"{label}: mouth correlation {mouth:.2f} {'>=' if mouth >= 0.8 else '<'} 0.8")
        if label == "liax_driving1.mp4" and args.size == 256:
            e2e = r["frames"] / r["wall"]
            lines.append(f"{label} (512x512): end to end {e2e:.1f} f/s {'>=' if e2e >= 25 else '<'} 25")
    long = results.get(args.long.name)
    short = next((r for k, r in results.items() if k.startswith(args.long.name + " first")), None)
    if long and short:
        ratio = long["peak_rss_mib"] / short["peak_rss_mib"]
        lines.append(f"memory: long/short peak RSS {ratio:.3f} {'within' if ratio <= 1.2 else 'over'} 1.2")
    if lines:
        print("\ntargets (issue 2):\n" + "\n".join(f"- {x}" for x in lines))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--drivers", nargs="+", type=Path, default=DRIVERS)
    p.add_argument("--source", type=Path, default=SOURCE)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--backend", default="landmark", help="a registered backend, or 'still' (a do-nothing stand-in)")
    p.add_argument("--long", type=Path, default=DRIVERS[-1], help="driver whose memory is compared with its start")
    p.add_argument("--short-seconds", type=float, default=5.0)
    p.add_argument("--samples", type=int, default=32, help="output frames sampled for the identity measure")
    p.add_argument("--no-measure", action="store_true", help="skip the face measures")
    p.add_argument("--keep", type=Path, help="keep the outputs in this folder")
    p.add_argument("--json", type=Path, help="also write all figures here")
    p.add_argument("--encode-frames", type=int, default=200, help="output frames re-encoded to time the encoder alone")
    # worker mode (internal)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--driver", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--output", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)
    for path in [args.source, *args.drivers]:
        if not path.exists():
            raise SystemExit(f"{path}: not found (the defaults need ../shared/assets beside the repo)")

    load_before = os.getloadavg()
    rows, results = [], {}
    with tempfile.TemporaryDirectory(prefix="reenact-bench-") as tmp:
        folder = args.keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        cases = [(d.name, d) for d in args.drivers]
        if args.long in args.drivers:
            short = cut(args.long, args.short_seconds, folder / f"{args.long.stem}_first{args.short_seconds:g}s.mp4")
            cases.append((f"{args.long.name} first {args.short_seconds:g} s", short))
        for label, driver in cases:
            stem = Path(label.split()[0]).stem + ("_short" if " first " in label else "")
            output = folder / f"{stem}.{args.backend}.mp4"
            print(f"running {label} ...", file=sys.stderr, flush=True)
            r = run_case(driver, output, args)
            if not args.no_measure:
                print(f"measuring {label} ...", file=sys.stderr, flush=True)
                r["face"] = measure(output, args.source, driver, args.samples)
            results[label] = r
            t, n = r["timings"], r["frames"]
            face = r.get("face") or {}
            ident = (face.get("identity") or {}).get("median")
            mouth = (face.get("motion") or {}).get("mouth_corr")
            mouth_gain = (face.get("motion") or {}).get("mouth_gain")
            stage_fps = [fps(n, t.get(s)) if s != "encode" else f"{1 / r['encode_alone']:.0f}" for s in STAGES]
            rows.append([label, str(n), f"{r['fps']:g}", *stage_fps,
                         fps(n, r["wall"]), fps(n, r["wall"] - t.get("setup", 0)), f"{r['wall']:.1f}",
                         f"{t.get('setup', 0):.1f}",
                         f"{r['peak_rss_mib']:.0f}", fmt(ident), fmt(mouth, 2), fmt(mouth_gain, 2)])
    load_after = os.getloadavg()

    header = ["driver", "frames", "fps", *[f"{s} f/s" for s in STAGES], "end to end f/s", "without setup f/s", "wall s",
              "setup s",
              "peak RSS MiB", "identity median", "mouth corr", "mouth gain"]
    print(f"\nbackend {args.backend}, size {args.size}, source {args.source.name}; "
          f"{os.cpu_count()} CPUs, {platform.python_version()}, load average {load_before[0]:.2f} before, "
          f"{load_after[0]:.2f} after\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" if i == 0 else "--:" for i in range(len(header))) + "|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    longs = [k for k in results if k == args.long.name]
    shorts = [k for k in results if k.startswith(args.long.name + " first")]
    if longs and shorts:
        a, b = results[longs[0]], results[shorts[0]]
        print(f"\npeak RSS, {a['frames']} frames ({a['frames'] / a['fps']:.0f} s) vs its first {b['frames']} "
              f"({b['frames'] / b['fps']:.0f} s): {a['peak_rss_mib']:.0f} vs {b['peak_rss_mib']:.0f} MiB "
              f"({100 * (a['peak_rss_mib'] / b['peak_rss_mib'] - 1):+.1f}%)")
    print("\nstage f/s = frames / seconds spent in that stage (track excludes decoding); encode f/s = the "
          "output's frames re-encoded alone with the same settings (in the pipeline the encoder runs on a thread "
          "beside the other stages, whose times include that contention); end to end = frames / "
          "wall time of animate() (setup, both passes, marks, mux, signing); setup = loading models and the source; "
          "peak RSS = ru_maxrss of the process that ran it; identity = median dlib distance, source vs output; "
          "mouth corr/gain = correlation and spread ratio of mouth opening, output vs driver.")
    targets(results, args)
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "load": [
            load_before, load_after], "results": results}, indent=2))


if __name__ == "__main__":
    main()
