"""Voice measures: speaker similarity, F0 correlation, mel-cepstral distortion, WER, speed.

- Speaker similarity: cosine between resemblyzer (GE2E, weights ship in the wheel)
  embeddings of the converted speech and the speaker embeddings of the target and of
  the original speaker.
- Prosody: Pearson correlation of log-F0 (DIO, within an octave of each signal's median) between converted and original on
  frames voiced in both, and the RMS difference in cents after removing the mean shift.
- Mel-cepstral distortion (dB, coefficients 1-24, DTW-aligned speech frames) to a
  parallel reference rendition by the target speaker.
- Word error rate of pocketsphinx's English model (ships in the wheel) against a
  transcript, for the converted and the original speech.
- Real-time factor of the conversion, when the model is given (it converts the original again).
"""

from __future__ import annotations

import logging
import re
import time
import warnings
from functools import lru_cache
from pathlib import Path

import numpy as np

from reenact.errors import ReenactError
from reenact.media.audio import Audio, read_audio
from reenact.voice import signal as S
from reenact.voice.convert import convert_array, load_voice
from reenact.voice.dataset import dataset_clips
from reenact.voice.world import analysis as F

log = logging.getLogger(__name__)

RATE = 16000
MAX_TARGET_CLIPS = 60


def load16(source: str | Path | Audio) -> np.ndarray:
    """Mono 16 kHz float64 speech from a file (any audio or video) or from audio in memory."""
    if isinstance(source, Audio):
        x = S.to_mono(source, RATE)
        S.check_signal(x, RATE, None, min_seconds=0.1)
        return x
    x = S.load_mono(source, RATE)
    S.check_signal(x, RATE, Path(source), min_seconds=0.1)
    return x


@lru_cache(maxsize=1)
def _encoder():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from resemblyzer import VoiceEncoder
    return VoiceEncoder("cpu", verbose=False)


def embed(x: np.ndarray) -> np.ndarray:
    """Unit-norm resemblyzer embedding of 16 kHz speech (silences trimmed by its VAD)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from resemblyzer import preprocess_wav
    wav = preprocess_wav(x.astype(np.float32), source_sr=RATE)
    if len(wav) < RATE // 4:  # VAD removed nearly everything: use the whole signal
        wav = x.astype(np.float32)
    return _encoder().embed_utterance(wav)


def speaker_embedding(paths: list[Path]) -> np.ndarray:
    """Speaker embedding: normalised mean of utterance embeddings."""
    if not paths:
        raise ReenactError("no audio files to build a speaker embedding from")
    e = np.mean([embed(load16(p)) for p in paths], axis=0)
    return e / np.linalg.norm(e)


def cached_speaker_embedding(paths: list[Path]) -> np.ndarray:
    """`speaker_embedding`, cached in the user cache folder by the clips' paths, sizes and times.

    A subject's speaker embedding takes about a second per clip on 2 cores; `reenact make`
    measures every output against it, so it is computed once per dataset.
    """
    import hashlib

    from reenact.models import cache_dir

    key = hashlib.sha256("\n".join(f"{p.resolve()}:{p.stat().st_size}:{p.stat().st_mtime_ns}"
                                    for p in paths).encode()).hexdigest()[:32]
    path = cache_dir() / "speaker-embeddings" / f"{key}.npy"
    if path.exists():
        try:
            return np.load(path)
        except (OSError, ValueError):
            pass
    e = speaker_embedding(paths)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.partial.npy")
        np.save(tmp, e)
        tmp.replace(path)
    except OSError as exc:  # a read-only cache only costs time
        log.debug("speaker embedding not cached: %s", exc)
    return e


def speaker_paths(path: str | Path, limit: int = MAX_TARGET_CLIPS) -> list[Path]:
    """A file, or up to `limit` clips spread over a dataset or folder of references."""
    path = Path(path)
    if path.is_file():
        return [path]
    clips = dataset_clips(path)
    if not clips:
        raise ReenactError("has no audio files", path)
    step = max(1, len(clips) // limit)
    return clips[::step][:limit]


def speaker_f0(x: np.ndarray) -> np.ndarray:
    """F0 (DIO + StoneMask, 10 ms) searched within an octave of the signal's median F0.

    The second pass removes the octave errors and creak (harvest finds 55 Hz in
    diphone speech) that otherwise dominate a correlation.
    """
    f0 = F.f0_track(x, RATE, 10.0)
    if (f0 > 0).sum() < 10:
        return f0
    med = float(np.median(f0[f0 > 0]))
    return F.f0_track(x, RATE, 10.0, floor=med / 2, ceil=med * 2)


def f0_correlation(converted: np.ndarray, original: np.ndarray) -> dict:
    """Log-F0 correlation and RMS difference (cents, mean shift removed) on frames voiced in both (`speaker_f0`)."""
    a, b = speaker_f0(converted), speaker_f0(original)
    n = min(len(a), len(b))
    a, b = a[:n], b[:n]
    both = (a > 0) & (b > 0)
    if both.sum() < 10:
        return {"f0_corr": None, "f0_rmse_cents": None, "voiced_frames": int(both.sum())}
    la, lb = np.log(a[both]), np.log(b[both])
    corr = float(np.corrcoef(la, lb)[0, 1])
    d = 1200 / np.log(2) * ((la - la.mean()) - (lb - lb.mean()))
    vuv = float(np.mean((a > 0) == (b > 0)))
    return {"f0_corr": corr, "f0_rmse_cents": float(np.sqrt(np.mean(d**2))), "voiced_frames": int(both.sum()),
            "voicing_agreement": vuv}


def _mcep(x: np.ndarray, dims: int = 25) -> np.ndarray:
    w = F.analyze(x, RATE, frame_period=10.0)
    from reenact.voice.world.model import speech_frames

    cep = F.Cepstrum(RATE, w.sp.shape[1], dims)
    # DCT of the log power envelope -> cepstrum of the log amplitude (SPTK scale)
    mc = cep.encode(w.sp) / (2 * np.sqrt(2 * w.sp.shape[1]))
    return mc[speech_frames(w.sp, 40.0)]


def mel_cepstral_distortion(converted: np.ndarray, reference: np.ndarray) -> float:
    """MCD in dB over coefficients 1-24, on speech frames aligned by DTW."""
    import librosa

    a, b = _mcep(converted)[:, 1:], _mcep(reference)[:, 1:]
    if len(a) < 2 or len(b) < 2:
        return float("nan")
    cost = np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))
    _, path = librosa.sequence.dtw(C=cost)
    d = cost[path[:, 0], path[:, 1]]
    return float(10 / np.log(10) * np.sqrt(2) * d.mean())


def _decoder():
    from pocketsphinx import Decoder

    return Decoder(samprate=RATE, loglevel="FATAL")


def transcribe(x: np.ndarray) -> str:
    """English transcript by pocketsphinx (16 kHz speech).

    Each call gets a new decoder (about 0.5 s): a decoder carries state from one utterance to the
    next, so reusing one made an utterance's transcript depend on those decoded before it (the 50
    kal_drive originals scored 40.9% WER in order, 38.0% each on its own).
    """
    pcm = (np.clip(x, -1, 1) * 32767).astype(np.int16).tobytes()
    d = _decoder()
    d.start_utt()
    d.process_raw(pcm, full_utt=True)
    d.end_utt()
    hyp = d.hyp()
    return hyp.hypstr if hyp is not None else ""


def normalise_text(text: str) -> str:
    text = re.sub(r"[^a-z' ]+", " ", text.lower().replace("-", " "))
    return " ".join(w.strip("'") for w in text.split())


def word_error_rate(reference: str, hypothesis: str) -> float:
    import jiwer

    ref, hyp = normalise_text(reference), normalise_text(hypothesis)
    if not ref:
        raise ReenactError("transcript is empty")
    return float(jiwer.wer(ref, hyp or "<empty>"))


def read_text(text: str | Path) -> str:
    """A transcript given as text, or as the path of a text file."""
    p = Path(str(text))
    if len(str(text)) < 4096 and p.suffix.lower() in {".txt", ".lab"} and p.is_file():
        return p.read_text().strip()
    return str(text)


def evaluate_voice(converted: str | Path | Audio, target: str | Path, original: str | Path | Audio,
                   reference: str | Path | None = None, text: str | None = None,
                   model: str | Path | None = None) -> dict:
    """Measure converted speech against the target speaker and the original it was converted from (each a
    file, or audio in memory)."""
    conv, orig = load16(converted), load16(original)
    e_conv = embed(conv)
    e_target = cached_speaker_embedding(speaker_paths(target))
    e_utterance = embed(orig)
    # A file's (or an in-memory clip's) speaker embedding is its one utterance's: embed it once, not twice.
    if isinstance(original, Audio) or Path(original).is_file():
        e_orig = e_utterance / np.linalg.norm(e_utterance)
    else:
        e_orig = speaker_embedding(speaker_paths(original))
    name = lambda source: None if isinstance(source, Audio) else str(source)
    out: dict = {
        "converted": name(converted), "target": str(target), "original": name(original),
        "cos_target": float(e_conv @ e_target), "cos_original": float(e_conv @ e_orig),
        "baseline_cos_target": float(e_utterance @ e_target),
    }
    out["closer_to_target"] = out["cos_target"] > out["cos_original"]
    out.update(f0_correlation(conv, orig))
    if reference is not None:
        out["mcd_db"] = mel_cepstral_distortion(conv, load16(reference))
    if text:
        text = read_text(text)
        out["text"] = text
        out["hyp_converted"], out["hyp_original"] = transcribe(conv), transcribe(orig)
        out["wer"] = word_error_rate(text, out["hyp_converted"])
        out["wer_original"] = word_error_rate(text, out["hyp_original"])
    if model is not None:
        voice = load_voice(model)
        audio = original if isinstance(original, Audio) else read_audio(original, mono=True)
        start = time.perf_counter()
        convert_array(audio.mono(), audio.sample_rate, voice)
        out["rtf"] = (time.perf_counter() - start) / audio.duration
    return out


def format_voice_report(r: dict) -> str:
    """Human-readable lines of an `evaluate_voice` report."""
    f = lambda v, spec: format(v, spec) if isinstance(v, (int, float)) else "-"
    lines = [f"speaker similarity (resemblyzer cosine): to target {f(r['cos_target'], '.3f')}, "
             f"to original speaker {f(r['cos_original'], '.3f')} "
             f"({'closer to the target' if r['closer_to_target'] else 'NOT closer to the target'}); "
             f"unconverted original to target {f(r['baseline_cos_target'], '.3f')}",
             f"F0 correlation with the original (voiced frames): {f(r.get('f0_corr'), '.3f')}, "
             f"RMS difference {f(r.get('f0_rmse_cents'), '.0f')} cents"]
    if "mcd_db" in r:
        lines.append(f"mel-cepstral distortion to the reference: {f(r['mcd_db'], '.2f')} dB")
    if "wer" in r:
        lines.append(f"word error rate (pocketsphinx): converted {r['wer']:.1%}, original {r['wer_original']:.1%}")
    if "rtf" in r:
        lines.append(f"conversion real-time factor: {r['rtf']:.3f}")
    return "\n".join(lines)
