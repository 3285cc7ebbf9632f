"""so-vits-svc backend benchmark: conversion speed beside so-vits-svc-fork on the same weights, in one run.

    .venv/bin/python benchmarks/sovits.py --fork-python /path/to/venv-with-so-vits-svc-fork/bin/python \
        [--seconds 30] [--template so-vits-svc-4.0v1|legacy] [--json out.json]

Setup (pretrained weights cannot be downloaded here, so the weights are made, at full size):
- a generator of the chosen template with deterministic weights (`sovits.deterministic_state_dict`),
  saved as a so-vits-svc model folder (config.json + G_0.pth, the fork's layout);
- a full-size HuBERT-base with random weights in place of ContentVec (the same architecture and
  compute as ContentVec), saved as a transformers folder; both programs load it.
The speech is kal_drive utterances from ../shared/assets/speech/corpus joined back to back (their own
pauses kept), about --seconds long, at 44.1 kHz; a synthetic harmonic signal with pauses when ../shared
is missing.

Measured:
- reenact: `SovitsVoice.convert` (chunks cut at pauses, two at a time on a 2-core CPU, every sample
  converted), in float32 (the reference) and with the decoder in bfloat16 (`--dtype bfloat16`);
- so-vits-svc-fork: `Svc.infer_silence`, the path of its `svc infer` command (pauses zeroed, each
  speech chunk padded by 0.5 s), in a subprocess running --fork-python with its `get_hubert_model`
  pointed at the same HuBERT folder;
- both with dio F0, transpose 0, no F0 prediction; times exclude loading; real-time factor (RTF) =
  seconds of compute per second of audio; best of --repeats rounds, each running all three in turn;
- agreement: one utterance through the fork's `Svc.infer` and reenact in a single chunk, same seed:
  the largest absolute difference of the audio (F0, content features and generator end to end).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from reenact.voice import signal as S
from reenact.voice.sovits import content as C
from reenact.voice.sovits import model as sovits
from reenact.voice.sovits.infer import ConvertConfig, SovitsVoice
from reenact.voice.sovits.train import TEMPLATES

SPEECH = Path(__file__).resolve().parents[2] / "shared" / "assets" / "speech"
SR = 44100

FORK_SCRIPT = r"""
import json, sys, time
import numpy as np, torch
from torch import nn
import so_vits_svc_fork.utils as U
from so_vits_svc_fork.inference.core import Svc

work, repeats = sys.argv[1], int(sys.argv[2])
def local_hubert(device, final_proj=True):  # the fork fetches lengyue233/content-vec-best; use the local folder
    model = (U.HubertModelWithFinalProj if final_proj else U.HubertModel).from_pretrained(work + "/hubert")
    for m in model.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d)):
            U.remove_weight_norm_if_exists(m)
    return model.to(device)
U.get_hubert_model = local_hubert
svc = Svc(net_g_path=work + "/model/G_0.pth", config_path=work + "/model/config.json", device="cpu")
from so_vits_svc_fork.modules.synthesizers import SynthesizerTrn  # our saved file, strictly, in the fork's class
h = svc.hps
net = SynthesizerTrn(h.data.filter_length // 2 + 1, h.train.segment_size // h.data.hop_length, **h.model)
net.load_state_dict(torch.load(work + "/model/G_0.pth", weights_only=True)["model"], strict=True)
audio = np.load(work + "/speech.npy")
one = np.load(work + "/one.npy")
times = []
for _ in range(repeats):
    t = time.perf_counter()
    out = svc.infer_silence(audio, speaker=0, transpose=0, auto_predict_f0=False, f0_method="dio")
    times.append(time.perf_counter() - t)
torch.manual_seed(0)
y, _ = svc.infer(0, 0, one, auto_predict_f0=False, noise_scale=0.4, f0_method="dio")
np.save(work + "/fork_one.npy", y.numpy())
print(json.dumps({"seconds": times, "out_len": len(out), "zero_fraction": float(np.mean(out == 0)),
                  "strict_load_of_our_checkpoint": True}))
"""


def speech(seconds: float) -> tuple[np.ndarray, np.ndarray]:
    """(joined utterances, first utterance) at 44.1 kHz."""
    corpus = SPEECH / "corpus" / "kal_drive"
    if corpus.is_dir():
        clips = [S.resample(*_read(p), SR).astype(np.float32) for p in sorted(corpus.glob("*.flac"))]
    else:
        rng = np.random.default_rng(0)
        t = np.arange(int(2.5 * SR)) / SR
        tone = sum(np.sin(2 * np.pi * 120 * k * t * (1 + 0.1 * np.sin(2 * np.pi * t))) / k for k in range(1, 10))
        clips = [np.concatenate([0.1 * tone, 0.002 * rng.standard_normal(SR // 2)]).astype(np.float32)] * 20
    joined, total = [], 0
    for clip in clips:
        joined.append(clip)
        total += len(clip)
        if total >= seconds * SR:
            break
    one = clips[0][: len(clips[0]) // 512 * 512]  # a whole number of hops: both programs see the same frames
    return np.concatenate(joined).astype(np.float32), one.astype(np.float32)


def _read(path: Path) -> tuple[np.ndarray, int]:
    import soundfile as sf

    x, sr = sf.read(str(path), dtype="float32", always_2d=True)
    return x.mean(axis=1), sr


def make_weights(work: Path, template: str) -> dict:
    from transformers import HubertConfig

    config = json.loads(json.dumps(TEMPLATES[template]))
    config["spk"] = {"speaker0": 0}
    (work / "model").mkdir(parents=True)
    (work / "model" / "config.json").write_text(json.dumps(config, indent=2))
    net_g = sovits.build_generator(config)
    net_g.load_state_dict(sovits.deterministic_state_dict(net_g, seed=1))
    sovits.save_checkpoint(net_g, None, 1e-4, 0, work / "model" / "G_0.pth")
    torch.manual_seed(0)
    hubert = C._hubert_class()(HubertConfig(classifier_proj_size=256))  # HuBERT-base, random weights
    hubert.save_pretrained(work / "hubert")
    return config


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fork-python", help="python of an environment with so-vits-svc-fork installed")
    ap.add_argument("--seconds", type=float, default=30.0, help="length of the speech to convert")
    ap.add_argument("--template", default="so-vits-svc-4.0v1", choices=["so-vits-svc-4.0v1", "legacy"])
    ap.add_argument("--repeats", type=int, default=2, help="runs of each program (best is reported)")
    ap.add_argument("--json", type=Path, help="write the figures here too")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="sovits-bench-") as tmp:
        work = Path(tmp)
        make_weights(work, args.template)
        audio, one = speech(args.seconds)
        np.save(work / "speech.npy", audio), np.save(work / "one.npy", one)
        seconds = len(audio) / SR
        print(f"speech: {seconds:.1f} s; template {args.template}; torch threads {torch.get_num_threads()}")

        t = time.perf_counter()
        voice = SovitsVoice.load(work / "model", content=work / "hubert", device="cpu")
        load_s = time.perf_counter() - t
        fast = SovitsVoice.load(work / "model", content=work / "hubert", device="cpu", dtype="bfloat16")
        cfg = ConvertConfig(transpose=0, predict_f0=False)
        times: dict[str, list[float]] = {"float32": [], "bfloat16": []}
        outs = {}
        fork_runs = []
        for _ in range(args.repeats):  # interleaved with the fork's runs, so all see the same machine
            for name, v in (("float32", voice), ("bfloat16", fast)):
                t = time.perf_counter()
                outs[name] = v.convert(audio, cfg)
                times[name].append(time.perf_counter() - t)
            if args.fork_python:
                proc = subprocess.run([args.fork_python, "-c", FORK_SCRIPT, str(work), "1"], capture_output=True,
                                      text=True)
                if proc.returncode:
                    sys.exit(f"so-vits-svc-fork run failed:\n{proc.stderr[-3000:]}")
                fork_runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        out = outs["float32"]
        rel = float(np.sqrt(np.mean((outs["bfloat16"] - out) ** 2) / np.mean(out ** 2)))
        result = {"seconds_of_speech": seconds, "template": args.template, "load_s": load_s,
                  "reenact_rtf": min(times["float32"]) / seconds, "reenact_bf16_rtf": min(times["bfloat16"]) / seconds,
                  "bf16_relative_rms_difference": rel, "reenact_zero_fraction": float(np.mean(out == 0))}
        print(f"reenact float32:  RTF {result['reenact_rtf']:.3f} (runs "
              f"{', '.join(f'{s:.1f}' for s in times['float32'])} s), load {load_s:.1f} s")
        print(f"reenact bfloat16: RTF {result['reenact_bf16_rtf']:.3f} (runs "
              f"{', '.join(f'{s:.1f}' for s in times['bfloat16'])} s); differs from float32 by {rel:.2%} RMS")
        if args.fork_python:
            fork = dict(fork_runs[-1], seconds=[r["seconds"][0] for r in fork_runs])
            result["fork_rtf"] = min(fork["seconds"]) / seconds
            result["fork_zero_fraction"] = fork["zero_fraction"]
            result["speedup"] = result["fork_rtf"] / result["reenact_rtf"]
            result["speedup_bf16"] = result["fork_rtf"] / result["reenact_bf16_rtf"]
            print(f"so-vits-svc-fork: RTF {result['fork_rtf']:.3f} (runs "
                  f"{', '.join(f'{s:.1f}' for s in fork['seconds'])} s); exact zeros in its output "
                  f"{fork['zero_fraction']:.1%} (reenact {result['reenact_zero_fraction']:.1%})")
            print(f"speed-up: {result['speedup']:.2f}x float32, {result['speedup_bf16']:.2f}x bfloat16; "
                  f"our G_0.pth loaded strictly in the fork's SynthesizerTrn: "
                  f"{fork['strict_load_of_our_checkpoint']}")
            result["fork_strict_load"] = fork["strict_load_of_our_checkpoint"]
            # one utterance, whole, same seed: end-to-end agreement
            ref = np.load(work / "fork_one.npy")
            whole = ConvertConfig(transpose=0, predict_f0=False, chunk_seconds=1e9, split_for_cores=False, seed=0)
            with torch.random.fork_rng():
                mine = voice.convert(one, whole)
            n = min(len(ref), len(mine))
            result["one_utterance_max_abs_diff"] = float(np.max(np.abs(ref[:n] - mine[:n])))
            result["one_utterance_peak"] = float(np.max(np.abs(ref)))
            print(f"one utterance through both (same seed): max |diff| {result['one_utterance_max_abs_diff']:.2e} "
                  f"(peak {result['one_utterance_peak']:.2f})")
        result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"peak RSS (reenact process): {result['peak_rss_mib']:.0f} MiB")
        if args.json:
            args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
