"""Prepare a speaker's dataset: speech from audio/video files, split at pauses into clips.

Each input is decoded (anything FFmpeg reads), downmixed to mono and resampled.
Pauses are found from frame energy relative to the file's own noise floor and
speech level; clips of `min_seconds` to `max_seconds` (about `target_seconds`) are
cut only in the middle of pauses, so no word is cut. A stretch of speech with no
pause within `max_seconds` is dropped, not cut. Clips that are clipped, too noisy
or too short are dropped with the reason logged. Kept clips are loudness
normalised (EBU R128 via pyloudnorm) and written as FLAC, with `manifest.json`
(source, offsets, duration, loudness, SNR estimate).

Re-running is idempotent: an input whose path, size and modification time are in
the manifest is skipped; the manifest is rewritten after each input, so an
interrupted run resumes with the next unfinished input.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from reenact.errors import ReenactError
from reenact.files import atomic_write, write_text
from reenact.voice import signal as S

log = logging.getLogger(__name__)

MEDIA_EXTS = {".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a", ".aac", ".wma", ".aif", ".aiff", ".mp4",
              ".mov", ".mkv", ".webm", ".avi", ".m4v", ".mpg", ".mpeg", ".ts", ".3gp"}


@dataclass
class PrepareConfig:
    sample_rate: int = 44100
    target_seconds: float = 6.0
    min_seconds: float = 2.0
    max_seconds: float = 10.0
    min_pause: float = 0.12  # seconds of silence that count as a pause
    loudness: float = -23.0  # LUFS (EBU R128)
    min_snr: float = 15.0  # dB; noisier clips are dropped
    max_clipped: float = 0.001  # fraction of samples at full scale; more is "clipped"
    warn_minutes: float = 10.0


@dataclass
class PrepareSummary:
    out_dir: str
    minutes_read: float = 0.0
    minutes_kept: float = 0.0
    clips: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    skipped_inputs: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def text(self) -> str:
        drops = ", ".join(f"{n} {why}" for why, n in sorted(self.dropped.items())) or "none"
        lines = [f"kept {self.minutes_kept:.1f} min of {self.minutes_read:.1f} min read in {self.clips} clips "
                 f"(dropped: {drops}) -> {self.out_dir}"]
        return "\n".join(lines + [f"warning: {w}" for w in self.warnings])


def find_inputs(inputs: list[Path]) -> list[Path]:
    """Files given, plus media files found under folders given (sorted, hidden files skipped)."""
    found: list[Path] = []
    for p in map(Path, inputs):
        if p.is_dir():
            found += sorted(q for q in p.rglob("*") if q.is_file() and q.suffix.lower() in MEDIA_EXTS
                            and not any(part.startswith(".") for part in q.relative_to(p).parts))
        elif p.is_file():
            found.append(p)
        else:
            raise ReenactError("input not found", p)
    return found


def pauses(db: np.ndarray, hop: float, min_pause: float) -> tuple[list[tuple[int, int]], float]:
    """Silent runs (start, end frame) of at least `min_pause` seconds, and the silence threshold (dB)."""
    floor, speech = np.percentile(db, 10), np.percentile(db, 95)
    thr = max(floor + 0.35 * (speech - floor), speech - 40.0) if speech - floor > 10 else speech + 1.0
    silent = db < thr
    runs, start = [], None
    for i, s in enumerate(np.append(silent, False)):
        if s and start is None:
            start = i
        elif not s and start is not None:
            if (i - start) * hop >= min_pause:
                runs.append((start, i))
            start = None
    return runs, float(thr)


def split_points(runs: list[tuple[int, int]], n_frames: int, hop: float, cfg: PrepareConfig) -> list[tuple[int, int]]:
    """Speech segments (start, end frame), cut only inside pauses, of about `target_seconds`."""
    # speech islands between pauses
    islands, pos = [], 0
    for a, b in runs:
        if a > pos:
            islands.append((pos, a))
        pos = b
    if pos < n_frames:
        islands.append((pos, n_frames))
    segs: list[tuple[int, int]] = []
    i = 0
    while i < len(islands):
        start, j = islands[i][0], i
        # grow while the next island still fits in max_seconds; stop near the target
        while j + 1 < len(islands) and (islands[j + 1][1] - start) * hop <= cfg.max_seconds and \
                (islands[j][1] - start) * hop < cfg.target_seconds:
            j += 1
        segs.append((start, islands[j][1]))
        i = j + 1
    return segs


def _snr(db: np.ndarray, thr: float) -> float:
    speech, noise = db[db >= thr], db[db < thr]
    if len(noise) < 3:
        return 60.0
    return float(np.percentile(speech, 50) - np.percentile(noise, 50)) if len(speech) else 0.0


def _key(path: Path) -> str:
    st = path.stat()
    return f"{path.resolve()}|{st.st_size}|{int(st.st_mtime)}"


def _write_flac(path: Path, x: np.ndarray, sr: int) -> None:
    import soundfile as sf

    with atomic_write(path) as tmp:
        sf.write(str(tmp), x.astype(np.float32), sr, format="FLAC", subtype="PCM_16")


def _write_manifest(out_dir: Path, manifest: dict) -> None:
    write_text(out_dir / "manifest.json", json.dumps(manifest, indent=1))


def prepare_file(path: Path, out_dir: Path, cfg: PrepareConfig) -> tuple[list[dict], dict[str, int], float]:
    """Clips of one input: (manifest entries, drop reasons, seconds read)."""
    import pyloudnorm

    sr = cfg.sample_rate
    x = S.load_mono(path, sr)
    seconds = len(x) / sr
    hop = 0.01
    db = S.frame_db(x, sr, 0.02, hop)
    runs, thr = pauses(db, hop, cfg.min_pause)
    if np.percentile(db, 95) - np.percentile(db, 10) < cfg.min_snr:  # no pauses stand out of the noise
        log.info("%s: dropped (too noisy: no pauses stand out)", path)
        return [], {"too noisy": 1}, seconds
    meter = pyloudnorm.Meter(sr)
    tag = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:8]
    clips, dropped = [], {}
    pad = int(0.05 / hop)
    segs = split_points(runs, len(db), hop, cfg)
    for n, (a, b) in enumerate(segs):
        lo = segs[n - 1][1] + pad if n else 0  # silence this clip may take up to the neighbours' margins
        hi = segs[n + 1][0] - pad if n + 1 < len(segs) else len(db)
        a, b = max(lo, a - pad), min(hi, b + pad)
        short = int(cfg.min_seconds / hop) - (b - a)
        if short > 0:  # a short utterance: keep some more of the pauses around it
            a = max(lo, a - short // 2 - 1)
            b = min(hi, a + int(cfg.min_seconds / hop) + 1)
        dur = (b - a) * hop
        seg = x[int(a * hop * sr): int(b * hop * sr)]
        why = None
        if dur > cfg.max_seconds + 2 * pad * hop:
            why = "no pause within max length"
        elif dur < cfg.min_seconds:
            why = "too short"
        elif np.mean(np.abs(seg) >= 0.999) > cfg.max_clipped:
            why = "clipped"
        elif np.max(np.abs(seg)) < 1e-4:
            why = "silent"
        snr = _snr(db[a:b], thr)
        if why is None and snr < cfg.min_snr:
            why = "too noisy"
        if why:
            dropped[why] = dropped.get(why, 0) + 1
            log.info("%s: dropped %.1f-%.1f s (%s)", path, a * hop, b * hop, why)
            continue
        loud = float(meter.integrated_loudness(seg))
        if np.isfinite(loud):
            seg = seg * 10 ** ((cfg.loudness - loud) / 20)
        peak = np.max(np.abs(seg))
        if peak > 0.98:  # never clip when normalising
            seg = seg * 0.98 / peak
        name = f"{path.stem[:40]}_{tag}_{n:04d}.flac"
        _write_flac(out_dir / name, seg, sr)
        clips.append({"file": name, "source": str(path.resolve()), "start": round(a * hop, 3),
                      "end": round(b * hop, 3), "duration": round(len(seg) / sr, 3),
                      "loudness_lufs": round(loud, 2) if np.isfinite(loud) else None, "snr_db": round(snr, 1)})
    return clips, dropped, seconds


def prepare_dataset(inputs: list[Path], out_dir: Path, config: PrepareConfig | None = None) -> PrepareSummary:
    """Build (or resume) a dataset of speech clips in `out_dir` from audio/video files and folders."""
    cfg = config or PrepareConfig()
    if not 8000 <= cfg.sample_rate <= 192000:
        raise ReenactError(f"--sample-rate must be between 8000 and 192000 Hz, not {cfg.sample_rate}")
    if not cfg.min_seconds <= cfg.target_seconds <= cfg.max_seconds:
        raise ReenactError(f"--clip-seconds must be between {cfg.min_seconds:g} and {cfg.max_seconds:g}, "
                           f"not {cfg.target_seconds:g}")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ReenactError("output exists and is not a folder", out_dir)
    own = _own_clips(out_dir)
    paths = [p for p in find_inputs(inputs) if p.resolve() not in own]
    if not paths:
        raise ReenactError("no audio or video files found in the inputs", Path(inputs[0]) if inputs else None)
    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        return _prepare(paths, inputs, out_dir, cfg)
    except BaseException:
        if created and not any(out_dir.iterdir()):  # a run that wrote nothing leaves no empty folder
            out_dir.rmdir()
        raise


def _own_clips(out_dir: Path) -> set[Path]:
    """The clips a dataset folder holds (when the output folder is also among the inputs, they are not read)."""
    manifest = out_dir / "manifest.json"
    if not manifest.is_file():
        return set()
    return {(out_dir / c["file"]).resolve() for c in json.loads(manifest.read_text()).get("clips", [])}


def _prepare(paths: list[Path], inputs: list[Path], out_dir: Path, cfg: PrepareConfig) -> PrepareSummary:
    manifest_path = out_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    if manifest and manifest.get("config", asdict(cfg)) != asdict(cfg):
        raise ReenactError("was prepared with other settings; use a new output folder", out_dir)
    manifest = {"config": asdict(cfg), "inputs": manifest.get("inputs", {}), "clips": manifest.get("clips", [])}
    summary = PrepareSummary(str(out_dir))
    for path in paths:
        key = _key(path)
        if key in manifest["inputs"]:
            done = manifest["inputs"][key]
            log.info("%s: already prepared", path)
        else:
            try:
                clips, dropped, seconds = prepare_file(path, out_dir, cfg)
            except ReenactError as exc:
                if path in map(Path, inputs):  # named explicitly: the user must know
                    raise
                log.warning("skipped %s", exc)
                summary.skipped_inputs.append(f"{exc}")
                continue
            source = str(path.resolve())
            manifest["clips"] = [c for c in manifest["clips"] if c["source"] != source] + clips
            done = {"seconds": round(seconds, 3), "clips": len(clips), "dropped": dropped}
            manifest["inputs"] = {k: v for k, v in manifest["inputs"].items() if not k.startswith(source + "|")}
            manifest["inputs"][key] = done
            _write_manifest(out_dir, manifest)
        summary.minutes_read += done["seconds"] / 60
        for why, n in done["dropped"].items():
            summary.dropped[why] = summary.dropped.get(why, 0) + n
    current = {str(p.resolve()) for p in paths}
    kept = [c for c in manifest["clips"] if c["source"] in current]
    summary.clips = len(kept)
    summary.minutes_kept = sum(c["duration"] for c in kept) / 60
    if summary.minutes_kept < cfg.warn_minutes:
        summary.warnings.append(f"only {summary.minutes_kept:.1f} min of speech kept; {cfg.warn_minutes:g} to 20 min "
                                "is recommended (at least 1 min is needed to train)")
    if not manifest_path.is_file():
        _write_manifest(out_dir, manifest)
    return summary


AUDIO_EXTS = {".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a", ".aac", ".aif", ".aiff"}


def dataset_clips(dataset_dir: Path, need_manifest: bool = False) -> list[Path]:
    """The clips of a dataset folder: those in its manifest.json (from `reenact voice prepare`), else (unless
    `need_manifest`) every audio file under it."""
    dataset_dir = Path(dataset_dir)
    if not dataset_dir.is_dir():
        raise ReenactError("dataset folder not found", dataset_dir)
    manifest = dataset_dir / "manifest.json"
    if manifest.is_file():
        try:
            clips = [dataset_dir / c["file"] for c in json.loads(manifest.read_text())["clips"]]
        except (ValueError, KeyError, TypeError) as exc:
            raise ReenactError(f"unreadable manifest ({exc})", manifest) from None
        if not clips and need_manifest:
            raise ReenactError("the dataset has no clips", manifest)
        return clips
    if need_manifest:
        raise ReenactError("no manifest.json: prepare the dataset with `reenact voice prepare` first", dataset_dir)
    return sorted(p for p in dataset_dir.rglob("*") if p.suffix.lower() in AUDIO_EXTS and not p.name.startswith("."))
