"""What each `--motion` region transfers, measured with the face measures (reenact evaluate).

    python benchmarks/motion_regions.py [--backend landmark] [--seconds 10] [--driver vox_driving2.mp4]
                                        [--portrait taylor.png] [--regions all,expression,pose,lips,eyes]

Animates a shared portrait with the first SECONDS of a shared driver once per region and prints, per
region, the output-vs-driver Pearson correlation and gain (output spread / driver spread) of mouth
opening, eye opening, yaw and pitch. `expression` should keep yaw and pitch gains near 0 while mouth
and eyes follow; `pose` the reverse.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
from pathlib import Path

from reenact.evaluate.face import evaluate_face
from reenact.pipeline import AnimateConfig, animate

SHARED = Path(__file__).resolve().parents[2] / "shared" / "assets"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", default="landmark")
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--driver", default="vox_driving2.mp4")
    ap.add_argument("--portrait", default="taylor.png")
    ap.add_argument("--regions", default="all,expression,pose,lips,eyes")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        driver = Path(tmp) / "driver.mp4"
        subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-i", str(SHARED / "drivers" / args.driver), "-t",
                        str(args.seconds), "-an", "-c:v", "libx264", "-crf", "16", str(driver)], check=True)
        portrait = SHARED / "portraits" / args.portrait
        rows = []
        for region in args.regions.split(","):
            options = {"motion": region}
            if args.checkpoint:
                options["checkpoint"] = args.checkpoint
            out = Path(tmp) / f"{region}.mp4"
            animate(portrait, driver, out, AnimateConfig(backend=args.backend, backend_options=options))
            m = evaluate_face(out, portrait, driver)["motion"]
            rows.append((region, m))
    keys = ["mouth", "eyes", "yaw", "pitch"]
    print(f"{args.backend} backend, {args.portrait} driven by the first {args.seconds:g} s of {args.driver}")
    print("region      " + "".join(f"{k + ' corr':>12}{k + ' gain':>12}" for k in keys))
    fmt = lambda v: f"{v:12.2f}" if v is not None else f"{'-':>12}"  # noqa: E731
    for region, m in rows:
        print(f"{region:<12}" + "".join(fmt(m.get(f"{k}_corr")) + fmt(m.get(f"{k}_gain")) for k in keys))


if __name__ == "__main__":
    main()
