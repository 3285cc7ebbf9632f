"""Intelligibility of a voice model on a larger, held-out sentence set than kal_drive's 50.

    .venv/bin/python benchmarks/voice_dev.py --model slt.safetensors [--model other.safetensors ...]
        [--methods 'ppg-net;pitch'] [--work DIR] [--jobs 2] [--json out.json]

kal_drive was made with Festival's kal_diphone voice from Harvard lists 41-45. This script makes the
same voice say lists 46-72 (270 sentences, never used for training or tuning): `text2wave` from the
Debian packages festival and festvox-kallpc16k gives kal_drive's 41_01 bit for bit. It then measures,
per model and method, the pocketsphinx WER (the same measure as benchmarks/voice.py) beside the
originals' WER, the speaker similarity to slt and kal, and the F0 correlation. With 270 sentences the
WER of one configuration moves far less between training seeds than on 50 (docs/voice.md).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from reenact.voice import signal as S

SPEECH = Path(__file__).resolve().parents[2] / "shared" / "assets" / "speech"
LISTS = range(46, 73)


def harvard(path: Path) -> dict[str, str]:
    """'LL_SS' -> sentence, from the corpus's harvard.txt ('LIST nn' then 10 sentences)."""
    out, current, n = {}, 0, 0
    for line in path.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        if m := re.fullmatch(r"LIST (\d+)", line.strip()):
            current, n = int(m.group(1)), 0
            continue
        n += 1
        out[f"{current:02d}_{n:02d}"] = line.strip()
    return out


def synthesize(texts: dict[str, str], folder: Path) -> list[Path]:
    """Festival's kal_diphone saying each sentence, as 16 kHz FLAC (kept: a second run reuses them)."""
    import soundfile as sf

    if shutil.which("text2wave") is None:
        raise SystemExit("text2wave not found: apt-get install festival festvox-kallpc16k")
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    with tempfile.TemporaryDirectory() as tmp:
        for key, text in texts.items():
            path = folder / f"{key}.flac"
            if not path.exists():
                (Path(tmp) / "s.txt").write_text(text + "\n")
                subprocess.run(["text2wave", "-eval", "(voice_kal_diphone)", str(Path(tmp) / "s.txt"), "-o",
                                str(Path(tmp) / "s.wav")], check=True, capture_output=True)
                x, sr = sf.read(Path(tmp) / "s.wav")
                sf.write(path, x, sr)
            paths.append(path)
    return paths


_JOB: dict = {}


def _init(model: str | None, method: str | None, texts: dict, e_slt: np.ndarray, e_kal: np.ndarray) -> None:
    import torch

    from reenact.voice.world.model import VoiceModel

    torch.set_num_threads(1)
    _JOB.update(model=VoiceModel.load(model) if model else None, method=method, texts=texts, e_slt=e_slt, e_kal=e_kal)


def _measure(path: Path) -> dict:
    from reenact.evaluate import voice as E
    from reenact.voice.world.model import convert_array

    model, x16 = _JOB["model"], E.load16(path)
    start = time.perf_counter()
    if model is None:
        y16 = x16
    else:
        y = convert_array(S.load_mono(path, model.sample_rate), model, method=_JOB["method"])
        y16 = S.resample(y, model.sample_rate, E.RATE)
    took = time.perf_counter() - start
    e = E.embed(y16)
    row = {"file": path.stem, "cos_slt": float(e @ _JOB["e_slt"]), "cos_kal": float(e @ _JOB["e_kal"]),
           "wer": E.word_error_rate(_JOB["texts"][path.stem], E.transcribe(y16)), "seconds": took,
           "duration": len(x16) / E.RATE}
    if model is not None:
        row.update(E.f0_correlation(y16, x16))
    return row


def run(name: str, model: str | None, method: str | None, paths: list[Path], jobs: int, texts: dict,
        e_slt: np.ndarray, e_kal: np.ndarray) -> dict:
    with ProcessPoolExecutor(jobs, initializer=_init, initargs=(model, method, texts, e_slt, e_kal)) as pool:
        rows = list(pool.map(_measure, paths))
    mean = lambda k: float(np.mean([r[k] for r in rows if r.get(k) is not None])) if k in rows[0] else None
    return {"name": name, "n": len(rows), "wer": mean("wer"), "cos_slt": mean("cos_slt"), "cos_kal": mean("cos_kal"),
            "closer_to_slt": float(np.mean([r["cos_slt"] > r["cos_kal"] for r in rows])), "f0_corr": mean("f0_corr"),
            "rtf": sum(r["seconds"] for r in rows) / sum(r["duration"] for r in rows), "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", action="append", default=[], help="a world .safetensors model (repeatable)")
    ap.add_argument("--methods", default="", help="';'-separated conversion methods to also run (e.g. 'pitch'); "
                                                  "default: each model's own")
    ap.add_argument("--speech", type=Path, default=SPEECH)
    ap.add_argument("--work", type=Path, default=Path("voice_dev"), help="where the synthesized sentences are kept")
    ap.add_argument("--limit", type=int, default=270)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    from reenact.evaluate import voice as E

    texts = {k: v for k, v in harvard(args.speech / "harvard.txt").items() if int(k[:2]) in LISTS}
    texts = dict(list(texts.items())[:args.limit])
    start = time.perf_counter()
    paths = synthesize(texts, args.work / "kal")
    print(f"{len(paths)} sentences of Harvard lists {LISTS.start}-{LISTS.stop - 1} ({time.perf_counter() - start:.0f} s)")
    corpus = args.speech / "corpus"
    e_slt = E.speaker_embedding(sorted((corpus / "slt_ref").glob("*.flac")))
    e_kal = E.speaker_embedding(sorted((corpus / "kal_drive").glob("*.flac")))
    results = [run("unconverted", None, None, paths, args.jobs, texts, e_slt, e_kal)]
    for model in args.model:
        for method in [None] + [m for m in args.methods.split(";") if m]:
            name = f"{Path(model).name}{'' if method is None else ' ' + method}"
            results.append(run(name, model, method, paths, args.jobs, texts, e_slt, e_kal))
            print(f"  {name}: done", flush=True)
    base = results[0]["wer"]
    print(f"\n{'model / method':40s} {'WER':>6s} {'- orig':>7s} {'cos slt':>8s} {'cos kal':>8s} {'closer':>7s} "
          f"{'F0 r':>6s} {'RTF':>6s}")
    for r in results:
        f0 = f"{r['f0_corr']:6.3f}" if r["f0_corr"] is not None else f"{'-':>6s}"
        print(f"{r['name'][:40]:40s} {r['wer']:6.1%} {r['wer'] - base:+7.1%} {r['cos_slt']:8.3f} {r['cos_kal']:8.3f} "
              f"{r['closer_to_slt']:7.0%} {f0} {r['rtf']:6.3f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
