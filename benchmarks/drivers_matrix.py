"""Every shared driver x several portraits: does each output decode to the end with the
driver's frame count (within one), frame rate and audio? Plus identity and motion measures.

    python benchmarks/drivers_matrix.py [--portraits biden.jpg obama.jpg ...] [--backend landmark]

Prints a markdown table (one row per run: identity median, mouth / eye-opening / yaw / pitch
correlation with the driver, yaw and pitch gain (output spread over driver spread), jitter ratio)
and summary lines (medians, worst cases, against issue 18's targets).

Every output carries the same id in its watermark (`OUTPUT_ID`): the mark's pattern is fixed
per id, and dlib's landmarks on a face under a different pattern differ enough to move a
pair's jitter ratio by up to 10% between two runs of the same code (1.38 and 1.50 on
liax_driving1 x biden). With one id, two runs of the same code give the same table.

`--ceiling` adds, per driver, what the measures give for the driver itself, scaled to 512 px
and re-encoded (x264, crf 18), against the driver: the most any output can reach there.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np

ASSETS = Path(__file__).resolve().parents[2] / "shared" / "assets"
OUTPUT_ID = "5e1ec7ed-0000-4000-8000-000000000018"  # one watermark pattern for every output: reproducible measures


def streams(path: Path) -> tuple[int, float, float | None, float]:
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        a = c.streams.audio[0] if c.streams.audio else None
        n = sum(1 for _ in c.decode(v))
        dur = c.duration / av.time_base if c.duration else 0.0
        return n, float(v.guessed_rate or v.average_rate), (float(a.duration * a.time_base) if a is not None else None), dur


def _median(rows: list[dict], key: str) -> float | None:
    values = [r[key] for r in rows if r.get(key) is not None]
    return float(np.median(values)) if values else None


def summary(rows: list[dict]) -> str:
    """Medians and worst cases of the motion measures, against issue 18's targets."""
    fmt = lambda x: "-" if x is None else f"{x:.3f}"
    mouth = [r["mouth_r"] for r in rows if r["mouth_r"] is not None]
    lines = [f"median: mouth r {fmt(_median(rows, 'mouth_r'))}, eyes r {fmt(_median(rows, 'eyes_r'))} (target >= 0.7), "
             f"yaw r {fmt(_median(rows, 'yaw_r'))}, pitch r {fmt(_median(rows, 'pitch_r'))}, "
             f"yaw gain {fmt(_median(rows, 'yaw_gain'))} (target >= 0.7), pitch gain {fmt(_median(rows, 'pitch_gain'))}, "
             f"jitter ratio {fmt(_median(rows, 'jitter_ratio'))}, identity {fmt(_median(rows, 'identity_median'))}",
             f"mouth r >= 0.85 on {sum(m >= 0.85 for m in mouth)}/{len(rows)} pairs (lowest {fmt(min(mouth) if mouth else None)}); "
             f"identity <= 0.35 on {sum(r['identity_median'] <= 0.35 for r in rows)}/{len(rows)}; "
             f"driver blinks of 4+ frames shown shut: {sum(r['blinks_shown'] or 0 for r in rows)}"
             f"/{sum(r['blinks_driver'] or 0 for r in rows)}"]
    return "\n".join(lines)


def ceiling(driver: Path) -> dict:
    """The measures of the driver, scaled to 512x512 and re-encoded, against the driver itself."""
    from reenact.evaluate.face import evaluate_face
    from reenact.media.video import VideoWriter, iter_frames, probe
    import cv2

    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "copy.mp4"
        with VideoWriter(copy, probe(driver).fps, crf=18, preset="veryfast") as writer:
            for frame in iter_frames(driver):
                writer.write(cv2.resize(frame, (512, 512), interpolation=cv2.INTER_CUBIC))
        m = evaluate_face(copy, ASSETS / "portraits" / "obama.jpg", driver, identity_samples=1)
    return {**m["motion"], "jitter_ratio": m["jitter"]["ratio"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--portraits", nargs="+", default=["biden.jpg", "obama.jpg", "macron.png", "liax_portrait2.png"])
    parser.add_argument("--drivers", nargs="*", default=None, help="driver file names (default: all)")
    parser.add_argument("--backend", default="landmark")
    parser.add_argument("--size", default="auto", help="256, 512 or auto (the CLI's default)")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON here")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="a backend option (repeatable), e.g. --option turn=0.7")
    parser.add_argument("--ceiling", action="store_true",
                        help="also measure each driver against itself scaled to 512 px and re-encoded")
    args = parser.parse_args()

    from reenact.evaluate.face import evaluate_face
    from reenact.pipeline import AnimateConfig, animate

    options = {k: float(v) for k, v in (o.split("=", 1) for o in args.option)}
    drivers = sorted((ASSETS / "drivers").iterdir()) if not args.drivers else [ASSETS / "drivers" / d for d in args.drivers]
    rows = []
    print("| driver | portrait | frames in/out | fps in/out | audio in/out (s) | fps made | identity median "
          "| mouth r | eyes r | yaw r | pitch r | yaw gain | pitch gain | jitter ratio | blinks shown |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for driver in drivers:
            n_in, fps_in, a_in, _ = streams(driver)
            for name in args.portraits:
                out = Path(tmp) / f"{driver.stem}_{Path(name).stem}.mp4"
                t = time.perf_counter()
                animate(ASSETS / "portraits" / name, driver, out,
                                 AnimateConfig(backend=args.backend, size=args.size if args.size == "auto" else int(args.size),
                                               output_id=OUTPUT_ID, backend_options=options))
                seconds = time.perf_counter() - t
                n_out, fps_out, a_out, _ = streams(out)
                measures = evaluate_face(out, ASSETS / "portraits" / name, driver, identity_samples=16)
                ok = abs(n_out - n_in) <= 1 and abs(fps_out - fps_in) < 1e-3 and ((a_in is None) == (a_out is None))
                row = dict(driver=driver.name, portrait=name, frames_in=n_in, frames_out=n_out, fps_in=fps_in,
                           fps_out=fps_out, audio_in=a_in, audio_out=a_out, ok=ok, fps_made=n_out / seconds,
                           identity_median=measures["identity"]["median"],
                           mouth_r=measures["motion"]["mouth_corr"], eyes_r=measures["motion"]["eyes_corr"],
                           yaw_r=measures["motion"]["yaw_corr"], pitch_r=measures["motion"]["pitch_corr"],
                           yaw_gain=measures["motion"]["yaw_gain"], pitch_gain=measures["motion"]["pitch_gain"],
                           mouth_gain=measures["motion"]["mouth_gain"], eyes_gain=measures["motion"]["eyes_gain"],
                           jitter_ratio=measures["jitter"]["ratio"], blinks_driver=measures["motion"]["blinks_driver"],
                           blinks_shown=measures["motion"]["blinks_shown"])
                rows.append(row)
                fmt = lambda x: "-" if x is None else f"{x:.2f}"
                print(f"| {driver.name} | {name} | {n_in}/{n_out} | {fps_in:.3g}/{fps_out:.3g} | {fmt(a_in)}/{fmt(a_out)} "
                      f"| {row['fps_made']:.1f} | {row['identity_median']:.3f} | {fmt(row['mouth_r'])} | {fmt(row['eyes_r'])} "
                      f"| {fmt(row['yaw_r'])} | {fmt(row['pitch_r'])} | {fmt(row['yaw_gain'])} | {fmt(row['pitch_gain'])} "
                      f"| {fmt(row['jitter_ratio'])} | {row['blinks_shown']}/{row['blinks_driver']} |",
                      flush=True)
    if args.ceiling:
        print("\n| driver | ceiling: mouth r | eyes r | yaw r | jitter ratio | blinks shown |\n|---|--:|--:|--:|--:|--:|")
        for driver in drivers:
            c = ceiling(driver)
            fmt = lambda x: "-" if x is None else f"{x:.2f}"
            print(f"| {driver.name} | {fmt(c['mouth_corr'])} | {fmt(c['eyes_corr'])} | {fmt(c['yaw_corr'])} "
                  f"| {fmt(c['jitter_ratio'])} | {c['blinks_shown']}/{c['blinks_driver']} |", flush=True)
    good = sum(r["ok"] for r in rows)
    worst = max(r["identity_median"] for r in rows)
    print(f"\n{good}/{len(rows)} outputs decode to the end with the driver's frame count, rate and audio; "
          f"worst identity median {worst:.3f}")
    print(summary(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0 if good == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
