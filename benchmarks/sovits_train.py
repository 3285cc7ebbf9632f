"""so-vits-svc training speed on this machine: steps/s for the full-size default config and the tiny test one.

    .venv/bin/python benchmarks/sovits_train.py [--steps 6] [--batch 2] [--threads N] [--only full|tiny]
        [--dataset DIR] [--json out.json] [--work DIR]

Data: a reenact dataset folder (--dataset, e.g. from `reenact voice prepare`) or, by default, 6 synthetic
2-second harmonic clips at 44.1 kHz. Content features come from a randomly initialised HuBERT of the
right output size (768 dims for the full model: the same width as ContentVec, 2 layers instead of 12,
which only changes the one-off preprocessing time, not the training step).

Full: template so-vits-svc-4.0v1 (generator 45.6 M parameters, discriminator 46.7 M), segment 10240
samples, --batch clips per step, fp32. Tiny: the tests' configuration (16 kHz, ~150 k parameters,
discriminator at 1/16 width), batch 2. Steps/s: median over steps 2..N of the rate logged per step
(step 1 is warm-up); preprocessing, model building and checkpoint writing are excluded.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_sovits_train import make_dataset, tiny_template  # noqa: E402

from reenact.voice.sovits.content import ContentEncoder  # noqa: E402
from reenact.voice.sovits.train import TrainConfig, train_sovits  # noqa: E402


def run(name: str, dataset: Path, work: Path, template: str | dict, steps: int, batch: int, dim: int) -> dict:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    encoder = ContentEncoder.random(hidden=dim, layers=2, proj=min(dim, 256))
    config = TrainConfig(steps=steps, batch_size=batch, template=template, log_interval=1, eval_interval=10 ** 9,
                         checkpoint_interval=10 ** 9, keep_ckpts=1, device="cpu")
    t0 = time.monotonic()
    train_sovits(dataset, work / name, config, encoder=encoder)
    total = time.monotonic() - t0
    acc = EventAccumulator(str(work / name / "logs"), size_guidance={"scalars": 0})
    acc.Reload()
    rates = [e.value for e in acc.Scalars("steps_per_second") if e.step > 1]
    mel = {e.step: e.value for e in acc.Scalars("loss/g/mel")}
    return {"config": name, "steps": steps, "batch": batch, "steps_per_s": round(float(np.median(rates)), 3),
            "s_per_step": round(1 / float(np.median(rates)), 2), "wall_s_incl_setup": round(total, 1),
            "mel_loss_first_last": [round(mel[min(mel)], 2), round(mel[max(mel)], 2)]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--batch", type=int, default=2, help="batch of the full-size run")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--only", choices=["full", "tiny"])
    ap.add_argument("--dataset", type=Path, help="a reenact dataset folder (default: synthetic clips)")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--work", type=Path, help="keep the model folders here (default: a temporary folder)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        if args.only != "tiny":
            data = args.dataset or make_dataset(work / "speaker44k", n=6, sr=44100, seconds=2.0)
            results.append(run("full", data, work, "so-vits-svc-4.0v1", args.steps, args.batch, 768))
        if args.only != "full":
            data = args.dataset or make_dataset(work / "speaker16k")
            results.append(run("tiny", data, work, tiny_template(), max(args.steps, 20), 2, 16))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    with open("/proc/loadavg") as f:
        load = f.read().split()[0]
    for r in results:
        print(f"{r['config']:5s} batch {r['batch']}: {r['steps_per_s']:.3f} steps/s ({r['s_per_step']:.2f} s/step), "
              f"mel loss {r['mel_loss_first_last'][0]} -> {r['mel_loss_first_last'][1]} over {r['steps']} steps")
    print(f"torch threads {torch.get_num_threads()}, peak RSS {peak:.0f} MiB, load average {load}")
    if args.json:
        args.json.write_text(json.dumps({"results": results, "threads": torch.get_num_threads(),
                                         "peak_rss_mib": round(peak), "load": float(load)}, indent=2))


if __name__ == "__main__":
    main()
