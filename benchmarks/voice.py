"""Voice benchmark: prepare and train on slt_train, convert kal_drive, measure against slt_ref.

    .venv/bin/python benchmarks/voice.py [--methods 'ppg-net;ppg-net:net.gv=0.5;ppg:convert_f0=dio'] [--limit 50]
        [--json out.json]

Prints, per spectral method: speaker similarity (resemblyzer cosine of each converted
utterance to the slt and kal speaker embeddings, built from slt_ref and the kal
originals), share of utterances closer to slt, pocketsphinx WER against the
transcripts, F0 correlation with the driver, MCD to the parallel slt_ref, conversion
real-time factor; beside the unconverted kal baseline. Also the preparation and
training times and the conversion of the real recordings RD_Radio*.wav.
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

from reenact.evaluate import voice as E
from reenact.voice import signal as S
from reenact.voice.dataset import prepare_dataset
from reenact.voice.world.model import TrainConfig, VoiceModel, convert_array, train_voice

SPEECH = Path(__file__).resolve().parents[2] / "shared" / "assets" / "speech"


def measure(name: str, items: list[tuple[Path, np.ndarray]], e_slt, e_kal, texts, wer0: dict,
            ref_dir: Path = SPEECH / "corpus" / "slt_ref") -> dict:
    rows = []
    for path, y16 in items:
        e = E.embed(y16)
        row = {"file": path.name, "cos_slt": float(e @ e_slt), "cos_kal": float(e @ e_kal)}
        if name != "unconverted":
            row.update(E.f0_correlation(y16, E.load16(path)))
            row["mcd_db"] = E.mel_cepstral_distortion(y16, E.load16(ref_dir / path.name))
        if texts is not None:
            row["wer"] = wer0[path.stem] if name == "unconverted" else E.word_error_rate(texts[path.stem], E.transcribe(y16))
        rows.append(row)
    mean = lambda k: float(np.mean([r[k] for r in rows if r.get(k) is not None])) if rows and k in rows[0] else None
    return {"method": name, "n": len(rows), "cos_slt": mean("cos_slt"), "cos_kal": mean("cos_kal"),
            "closer_to_slt": float(np.mean([r["cos_slt"] > r["cos_kal"] for r in rows])),
            "wer": mean("wer"), "f0_corr": mean("f0_corr"), "mcd_db": mean("mcd_db"), "rows": rows}


def config_value(default, value: str):
    """A `--methods` option value, of the type of the model's config value (strings stay strings)."""
    if isinstance(default, str):
        return value
    number = float(value) if "." in value else int(value)
    return type(default)(number) if default is not None else number


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--speech", type=Path, default=SPEECH)
    ap.add_argument("--methods", default="ppg-net;ppg:convert_f0=dio;pitch:convert_f0=dio;pitch",
                    help="';'-separated METHOD[:key=value,...] (TrainConfig fields used in conversion, e.g. "
                    "'ppg;ppg:convert_f0=harvest')")
    ap.add_argument("--train-method", default=TrainConfig.method)
    ap.add_argument("--limit", type=int, default=50, help="kal_drive utterances measured")
    ap.add_argument("--no-wer", action="store_true", help="skip pocketsphinx (the slowest measure)")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--sovits", type=Path, help="also measure this so-vits-svc model folder (e.g. from `reenact "
                    "voice train DATASET --backend sovits`) on the same utterances, beside the offline backend")
    ap.add_argument("--sovits-content", help="ContentVec for --sovits (default: the one it was trained with)")
    ap.add_argument("--work", type=Path, help="keep the dataset and model here")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    corpus = args.speech / "corpus"
    if not corpus.is_dir():
        raise SystemExit(f"{corpus}: speech corpus not found")
    work = args.work or Path(tempfile.mkdtemp(prefix="voice-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    report: dict = {}

    t = time.perf_counter()
    summary = prepare_dataset([corpus / "slt_train"], work / "dataset")
    report["prepare"] = {"seconds": round(time.perf_counter() - t, 1), "summary": summary.text()}
    print(f"prepare: {summary.text()} in {report['prepare']['seconds']} s")
    t = time.perf_counter()
    model_path = train_voice(work / "dataset", work / "slt.safetensors", TrainConfig(method=args.train_method))
    report["train_seconds"] = round(time.perf_counter() - t, 1)
    model = VoiceModel.load(model_path)
    print(f"train: {report['train_seconds']} s on {model.meta['training']['minutes']} min "
          f"({model_path.stat().st_size / 1e6:.1f} MB model)")

    texts = dict(line.rstrip("\n").split("\t") for line in open(corpus / "transcripts.tsv")) if not args.no_wer else None
    kal = sorted((corpus / "kal_drive").glob("*.flac"))[: args.limit]
    e_slt = E.speaker_embedding(sorted((corpus / "slt_ref").glob("*.flac")))
    e_kal = E.speaker_embedding(sorted((corpus / "kal_drive").glob("*.flac")))
    originals = [(p, E.load16(p)) for p in kal]
    wer0 = {p.stem: E.word_error_rate(texts[p.stem], E.transcribe(x)) for p, x in originals} if texts else {}
    results = [measure("unconverted", originals, e_slt, e_kal, texts, wer0, corpus / "slt_ref")]
    defaults = dict(model.meta["config"])
    for spec in args.methods.split(";"):
        method, _, opts = spec.partition(":")
        model.meta["config"] = dict(defaults)
        for kv in filter(None, opts.split(",")):
            key, value = kv.split("=")
            if "." in key:  # a field of a nested configuration, e.g. net.gv=0.3
                outer, inner = key.split(".", 1)
                section = dict(model.meta["config"][outer])
                section[inner] = config_value(section.get(inner), value)
                model.meta["config"][outer] = section
            else:
                model.meta["config"][key] = config_value(defaults.get(key), value)
        model._cache.clear()
        items, took, dur = [], 0.0, 0.0
        for p in kal:
            x = S.load_mono(p, model.sample_rate)
            t = time.perf_counter()
            y = convert_array(x, model, method=method)
            took += time.perf_counter() - t
            dur += len(x) / model.sample_rate
            items.append((p, S.resample(y, model.sample_rate, E.RATE)))
        res = measure(spec, items, e_slt, e_kal, texts, wer0, corpus / "slt_ref")
        res["rtf"] = took / dur
        results.append(res)
    if args.sovits:
        from reenact.voice.convert import convert_array as convert_any
        from reenact.voice.convert import load_voice

        voice = load_voice(args.sovits, "sovits", {"content": args.sovits_content})
        items, took, dur = [], 0.0, 0.0
        for p in kal:
            x16 = E.load16(p)
            t = time.perf_counter()
            y, sr = convert_any(x16, E.RATE, voice)
            took += time.perf_counter() - t
            dur += len(x16) / E.RATE
            items.append((p, S.resample(y.astype(np.float64), sr, E.RATE)))
        res = measure(f"sovits {args.sovits.name}", items, e_slt, e_kal, texts, wer0, corpus / "slt_ref")
        res["rtf"] = took / dur
        results.append(res)
    report["results"] = results
    model.meta["config"] = dict(defaults)  # the real recordings below use the model's own configuration
    model._cache.clear()

    print(f"\n{len(kal)} kal_drive utterances -> slt (default method: {model.method})")
    print(f"{'method':24s} {'cos slt':>8s} {'cos kal':>8s} {'closer':>7s} {'WER':>6s} {'F0 corr':>8s} {'MCD dB':>7s} {'RTF':>6s}")
    fmt = lambda v, f: format(v, f) if v is not None else "-"
    for r in results:
        print(f"{r['method']:24s} {fmt(r['cos_slt'], '8.3f')} {fmt(r['cos_kal'], '8.3f')} {r['closer_to_slt']:7.0%} "
              f"{fmt(r['wer'], '6.1%')} {fmt(r['f0_corr'], '8.3f')} {fmt(r['mcd_db'], '7.2f')} {fmt(r.get('rtf'), '6.3f')}")

    real = []
    for p in sorted(args.speech.glob("RD_Radio*.wav")):
        x = S.load_mono(p, model.sample_rate)
        t = time.perf_counter()
        y = convert_array(x, model)
        rtf = (time.perf_counter() - t) / (len(x) / model.sample_rate)
        y16 = S.resample(y, model.sample_rate, E.RATE)
        e = E.embed(y16)
        real.append({"file": p.name, "rtf": rtf, "cos_slt": float(e @ e_slt),
                     "cos_original": float(e @ E.embed(E.load16(p))), **E.f0_correlation(y16, E.load16(p))})
        print(f"{p.name}: RTF {rtf:.3f}, cos slt {real[-1]['cos_slt']:.3f}, cos to its original "
              f"{real[-1]['cos_original']:.3f}, F0 corr {real[-1]['f0_corr']:.3f}")
    report["real_speech"] = real
    report["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak memory {report['peak_rss_mb']:.0f} MB")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
