"""One clip of a study: the task local workers and Ray run alike.

`run_clip(task)` makes the clip in a temporary folder and returns everything the runner writes: the MP4's
bytes, the record for key.csv and the gallery's data (a strip of frames, the series for the plots, the verify
result). It writes nothing under the study folder itself, so a task can run on any machine of a Ray cluster
(inputs are read from paths every machine sees; see docs/study.md), and a killed run leaves no half-written
clip behind.

Fakes (`fake`, `face`) are made by `pipeline.make` with the study's frame rate, frame size (the portrait fitted
without cropping), duration and loudness; real controls go through the same decode (resampled to the frame
rate by timestamp), the same uncropped resize, the same H.264 settings and the same loudness normalisation,
and carry no mark.
"""

from __future__ import annotations

import base64
import itertools
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import torch
from threadpoolctl import threadpool_limits

from reenact.evaluate.voice import RATE
from reenact.files import sha256_file
from reenact.media.audio import Audio, integrated_loudness, normalise_loudness, read_audio
from reenact.media.image import fit_frame
from reenact.media.video import VideoWriter, iter_frames, probe
from reenact.pipeline import AnimateConfig, MakeConfig, make
from reenact.provenance.verify import verify
from reenact.voice.world.analysis import f0_track

log = logging.getLogger(__name__)

STRIP_FRAMES = 6
STRIP_HEIGHT = 112
PLOT_POINTS = 160


@dataclass
class ClipTask:
    """Everything a worker needs to make one clip (plain data: it is pickled to workers and Ray)."""

    key: str
    id: str  # the blinded id (file name of the stimulus)
    condition: str
    subject: str | None
    driver: str
    path: str  # the driver's or real control's file
    subjects_dir: str | None  # where the subject lives (fake, face)
    settings: dict  # Settings.as_dict()
    output_id: str  # the id the marks carry (fixed per clip, so a rerun makes the same clip)
    threads: int = 0  # CPU threads this task may use (0: leave as is)


def run_clip(task: ClipTask) -> dict:
    """Make, check and describe one clip; see the module doc. Raises on failure (the runner retries)."""
    _limit_threads(task.threads)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="reenact-clip-") as tmp:
        out = Path(tmp) / "clip.mp4"
        if task.condition == "real":
            report = make_real(Path(task.path), out, task.settings)
        else:
            report = _make_fake(task, out)
        made = time.perf_counter()
        qc = describe(out, Path(task.path), task.condition, task.settings.get("duration"))
        video = out.read_bytes()
    timings = {"make": round(made - start, 3), "qc": round(time.perf_counter() - made, 3),
               "total": round(time.perf_counter() - start, 3)}
    # The quality measures (face, voice, the F0 and loudness of the result) and the marks' check, apart.
    timings["measures"] = round(report.get("timings", {}).get("measure", 0.0) + qc["seconds"]["audio"], 3)
    timings["verify"] = qc["seconds"]["verify"]
    return {"key": task.key, "id": task.id, "video": video, "report": report, "qc": qc, "timings": timings,
            "host": os.uname().nodename, "pid": os.getpid()}


def _limit_threads(threads: int) -> None:
    """This worker process's CPU threads (it makes one clip at a time; other workers have the other cores)."""
    if threads <= 0:
        return
    cv2.setNumThreads(threads)
    torch.set_num_threads(threads)
    threadpool_limits(threads)


def _make_fake(task: ClipTask, out: Path) -> dict:
    s = task.settings
    config = MakeConfig(
        animate=AnimateConfig(backend=s["motion"], size=s["size"], crf=s["crf"], preset=s["preset"],
                              visible_label=s["visible_label"], fps=Fraction(s["fps"]),
                              canvas=(s["width"], s["height"]), duration=s["duration"], output_id=task.output_id),
        transpose=s["transpose"], measure=True, measure_mode="fast", revoice=task.condition == "fake",
        loudness=s["loudness"])
    report = make(task.subject, task.path, out, config,
                  subjects_dir=Path(task.subjects_dir) if task.subjects_dir else None)
    out.with_suffix(".json").unlink(missing_ok=True)
    return report


def make_real(path: Path, out: Path, settings: dict) -> dict:
    """A real control: the fakes' decode, resize, encode and loudness path, with no mark."""
    start = time.perf_counter()
    fps = Fraction(settings["fps"])
    info = probe(path)
    limit = int(round(settings["duration"] * fps)) if settings.get("duration") else None
    writer = VideoWriter(out, fps, crf=settings["crf"], preset=settings["preset"])
    try:
        for frame in itertools.islice(iter_frames(path, fps), limit):
            writer.write(fit_frame(frame, settings["width"], settings["height"]))
        sound = read_audio(path) if info.has_audio else None
        if sound is not None:
            n = int(round(writer.frames_written / fps * sound.sample_rate))
            sound = normalise_loudness(Audio(sound.samples[:, :n], sound.sample_rate), settings["loudness"])
        writer.close(audio=sound)
    except BaseException:
        writer.abort()
        raise
    return {"inputs": {"driver": str(path), "driver_sha256": sha256_file(path)},
            "video": {"frames": writer.frames_written, "fps": float(fps), "size": [settings["width"],
                                                                                   settings["height"]],
                      "audio": sound is not None},
            "timings": {"encode": round(time.perf_counter() - start, 3)}, "measures": {}}


def describe(video: Path, source: Path, condition: str, duration: float | None) -> dict:
    """What the gallery shows of a made clip: verify result, loudness, frame strip, F0 series."""
    seconds = {}
    t = time.perf_counter()
    v = verify(video)
    seconds["verify"] = time.perf_counter() - t
    t = time.perf_counter()
    info = probe(video)
    loudness = f0 = None
    if info.has_audio:
        audio = read_audio(video)
        loudness = integrated_loudness(audio)
        f0 = _f0_series(video, source, condition, duration)
    seconds["audio"] = time.perf_counter() - t
    t = time.perf_counter()
    strip = frame_strip(video)
    seconds["strip"] = time.perf_counter() - t
    frames = sum(1 for _ in _frame_count(video))
    return {
        "verify": {"marked": v["marked"], "manifest": v["manifest"].get("state"),
                   "video_watermark": bool(v["video_watermark"].get("found")),
                   "audio_watermark": bool(v["audio_watermark"].get("found")),
                   "metadata": v["metadata"].get("synthetic") == "true",
                   "payload": v["payload"] if isinstance(v["payload"], str) else None},
        "loudness": None if loudness is None else round(loudness, 2),
        "width": info.width, "height": info.height, "fps": float(info.fps), "frames": frames,
        "duration": round(frames / float(info.fps), 3),
        "strip": strip, "f0": f0, "seconds": {k: round(x, 3) for k, x in seconds.items()},
    }


def _frame_count(video: Path):
    with av.open(str(video)) as c:
        yield from (p for p in c.demux(c.streams.video[0]) if p.size)


def frame_strip(video: Path, n: int = STRIP_FRAMES, height: int = STRIP_HEIGHT) -> list[str]:
    """`n` frames spread over the clip, as base64 JPEG thumbnails `height` pixels high."""
    total = max(probe(video).frame_count, 1)
    wanted = set(np.round(np.linspace(0, total - 1, n)).astype(int).tolist())
    out = []
    for i, frame in enumerate(iter_frames(video)):
        if i in wanted:
            h, w = frame.shape[:2]
            small = cv2.resize(frame, (max(1, round(w * height / h)), height), interpolation=cv2.INTER_AREA)
            ok, data = cv2.imencode(".jpg", cv2.cvtColor(small, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 80])
            out.append(base64.b64encode(data.tobytes()).decode())
    return out


def _f0_series(video: Path, source: Path, condition: str, duration: float | None) -> dict:
    """F0 (Hz, 10 ms frames, 0 unvoiced; one DIO pass, for the plot) of the clip's speech, and of the driver's
    original for fakes."""

    def f0(path: Path) -> list[float]:
        x = read_audio(path, RATE, mono=True).mono()
        if duration:
            x = x[: int(duration * RATE)]
        track = f0_track(x.astype(np.float64), RATE, 10.0) if x.size > RATE // 10 else np.zeros(0)
        step = max(1, len(track) // PLOT_POINTS)
        return np.round(track[::step], 1).tolist()

    return {"output": f0(video), "original": f0(source) if condition == "fake" else None}
