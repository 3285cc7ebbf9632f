"""The animation job: portrait + driver video -> MP4 with the driver's sound.

Two passes over the driver keep memory constant whatever its length:
1. track: decode each frame, follow the face (landmarks per frame, a few
   hundred bytes each), then bridge gaps, smooth, choose the reference frame
   and a steady crop box;
2. render: decode again, crop each frame around the face, let the motion
   backend animate the source crop in batches, paste the result back into
   the full portrait, mark it (visible label, luma watermark) and encode it;
   finally mux the driver's audio (watermarked), add the metadata tags and a
   signed C2PA manifest. Every output carries the marks; only the visible
   label can be switched off, and the manifest records when it was.
"""

from __future__ import annotations

import itertools
import logging
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field, replace
from fractions import Fraction
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from reenact.animate.base import Backend, DriverFrame, SourceFace, backend_class, resolve_size
from reenact.errors import ReenactError
from reenact.face import pose
from reenact.face.align import Crop, PasteBack, face_box
from reenact.face.detect import FaceDetector, Track, TrackConfig, choose_face, smooth_boxes, track
from reenact.files import clear_stale_partials, replace_together, sha256_file, temporary_path
from reenact.media.audio import Audio, normalise_loudness, read_audio
from reenact.media.container import check_output_path
from reenact.media.image import fit_frame, load_image
from reenact.media.video import VideoInfo, VideoWriter, iter_frames, probe
from reenact.provenance import Claims, Payload, VideoMarker, draw_label, mark_audio, sign_mp4
from reenact.subject import load_subject
from reenact.voice.base import model_files
from reenact.voice.convert import convert_audio, detect_backend, parse_transpose

log = logging.getLogger(__name__)

# progress(stage, done, total): called as work advances; total 0 when unknown.
ProgressFn = Callable[[str, int, int], None]


@dataclass
class AnimateConfig:
    """Settings of `reenact animate`."""

    backend: str = "landmark"
    size: int | str = "auto"  # crop size the backend works at: one of its sizes, or "auto" (the backend chooses)
    reference: str = "auto"  # "first", "auto" (closest pose to the source) or a frame number
    face_index: int = 0  # which face in the portrait (0 = largest)
    driver_face_index: int = 0  # which face in the driver's first frame with a face (0 = largest)
    paste_back: bool = True  # False writes the animated crop alone
    crf: int = 18
    preset: str = "veryfast"
    max_side: int = 1280  # larger portraits are scaled down to this long side
    batch: int = 8  # driver frames per backend call
    backend_options: dict = field(default_factory=dict)
    track: TrackConfig = field(default_factory=TrackConfig)
    crop_smooth_seconds: float = 1.0  # the driver's crop box follows the head this slowly
    visible_label: bool = True  # the "AI-generated" corner badge (the invisible marks are always added)
    consent_sha256: str | None = None  # the subject's consent record, stated in the manifest
    # Study sets (reenact.study) need every clip alike; None keeps the driver's and the portrait's own:
    fps: Fraction | None = None  # output frame rate: the driver is resampled to it by timestamp
    canvas: tuple[int, int] | None = None  # (width, height): the portrait is fitted in, scaled and padded, uncropped
    duration: float | None = None  # use only the driver's first seconds (frames and sound)
    output_id: str | None = None  # the id the marks carry; None: a random uuid per output


@dataclass
class AnimateResult:
    """What a run made, for reports and benchmarks."""

    output: Path
    frames: int
    fps: Fraction
    size: tuple[int, int]
    reference_index: int
    missing_frames: int
    audio: bool
    timings: dict[str, float]  # seconds per stage
    output_id: str = ""  # uuid of this output, carried by the watermarks and the manifest
    payload: str = ""  # the watermarks' 64-bit payload, hex
    crop_size: int = 256  # the size the backend worked at (what "auto" chose)
    driver: "DriverTrack | None" = field(default=None, repr=False)  # the tracking, for measures that reuse it
    driver_frames_expected: int = 0  # the driver container's frame count (its header's estimate)
    warnings: list[str] = field(default_factory=list)  # problems with the inputs that did not stop the run

    @property
    def duration(self) -> float:
        return self.frames / float(self.fps)


@dataclass
class Source:
    """The portrait, prepared: (scaled) full image, crop, and face crop for the backend."""

    image: np.ndarray
    crop: Crop
    face: SourceFace
    landmarks: np.ndarray  # full-image coordinates


def parse_size(value: str | int) -> int | str:
    """A crop size as a user gives it (command line, web form): "256", "512" or "auto"."""
    if str(value) not in ("auto", "256", "512"):
        raise ReenactError(f"--size must be 256, 512 or auto, not {value!r}")
    return "auto" if str(value) == "auto" else int(value)


def backend_options(backend: str, **given: str | None) -> dict:
    """The neural backend options given (None: not given); refused for the landmark backend, which takes none."""
    options = {key: value for key, value in given.items() if value is not None}
    neural = [key for key in options if key != "motion"]  # --motion regions apply to the landmark backend too
    if neural and backend == "landmark":
        raise ReenactError(f"--{', --'.join(neural)} {'applies' if len(neural) == 1 else 'apply'} to neural "
                           "backends, not the landmark backend")
    if backend == "landmark" and options.get("motion") in ("relative", "absolute"):
        raise ReenactError("--motion relative|absolute is LIA's mode; the landmark backend takes all, expression, "
                           "pose, lips or eyes")
    return options


def animate_config(backend: str = "landmark", size: str | int = "auto", reference: str = "auto",
                   driver_face_index: int = 0, crf: int = 18, visible_label: bool = True,
                   checkpoint: str | None = None, motion: str | None = None, dtype: str | None = None,
                   device: str | None = None, stitching: bool | None = None, smooth: float | None = None,
                   **more) -> AnimateConfig:
    """The AnimateConfig of the options `animate` and `make` share, as the CLI and the web UI take them
    (plus `more` AnimateConfig fields): checked here once for both."""
    options = backend_options(backend, checkpoint=checkpoint, motion=motion, dtype=dtype, device=device,
                              stitching=stitching, smooth=smooth)
    return AnimateConfig(backend=backend, size=parse_size(size), reference=reference,
                         driver_face_index=driver_face_index, crf=crf, visible_label=visible_label,
                         backend_options=options, **more)


def prepare_source(path: str | Path, detector: FaceDetector, config: AnimateConfig, backend: type) -> Source:
    """Load the portrait, find the face, and cut the square crop the backend (class) animates."""
    image = load_image(path, config.max_side)
    if config.canvas is not None:
        image = fit_frame(image, *config.canvas)
    h, w = image.shape[:2]
    if h % 2 or w % 2:  # H.264 yuv420p wants even sizes; drop one edge row/column
        image = np.ascontiguousarray(image[: h - h % 2, : w - w % 2])
    faces = detector.detect(image, upsample=1)
    face = choose_face(faces, config.face_index, Path(path))
    box = face_box(face.landmarks, backend.crop)
    crop = Crop.from_box(box, resolve_size(backend, config.size, float(box[2]), config.backend_options))
    landmarks = crop.to_crop(face.landmarks)
    return Source(image=image, crop=crop, face=SourceFace(crop.apply(image), landmarks), landmarks=face.landmarks)


def choose_reference(mode: str, driver: Track, source_landmarks: np.ndarray) -> int:
    """The driver frame motion is measured from."""
    if mode == "first":
        return 0
    if mode == "auto":
        return pose.closest_pose(driver.landmarks, source_landmarks)
    try:
        index = int(mode)
    except ValueError:
        raise ReenactError(f"--reference must be first, auto or a frame number, not {mode!r}") from None
    if not 0 <= index < driver.n_frames:
        raise ReenactError(f"--reference {index} is outside the driver's {driver.n_frames} frames")
    return index


class _Clock:
    """Accumulates wall time per stage."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    def timed(self, stage: str, iterator: Iterator) -> Iterator:
        while True:
            t = time.perf_counter()
            try:
                item = next(iterator)
            except StopIteration:
                self.seconds[stage] += time.perf_counter() - t
                return
            self.seconds[stage] += time.perf_counter() - t
            yield item

    def add(self, stage: str, since: float) -> float:
        now = time.perf_counter()
        self.seconds[stage] += now - since
        return now


def driver_frames(path: Path, info: VideoInfo, config: AnimateConfig) -> Iterator[np.ndarray]:
    """The driver's frames at `info.fps` (the config's rate, when it sets one), cut to `config.duration`."""
    frames = iter_frames(path, info.fps)
    return itertools.islice(frames, round(config.duration * info.fps)) if config.duration else frames


@dataclass
class DriverTrack:
    """The driver, followed: its face's landmarks in every frame, the smoothed crop box per frame, and the
    reference frame motion is measured from."""

    path: Path
    info: VideoInfo
    track: Track  # full-frame landmarks per frame (bridged where no face was found)
    crops: list[Crop]
    reference: int
    warnings: list[str] = field(default_factory=list)  # e.g. fewer frames decoded than the container lists

    def frame(self, i: int, image: np.ndarray | None) -> DriverFrame:
        """What the backend gets for frame `i` (its crop, when the backend asked for images)."""
        crop = self.crops[i]
        return DriverFrame(index=i, landmarks=crop.to_crop(self.track.landmarks[i]),
                           image=crop.apply(image) if image is not None else None, found=bool(self.track.found[i]))


def track_driver(path: Path, info: VideoInfo, detector: FaceDetector, config: AnimateConfig, backend: Backend,
                 source: Source, clock: _Clock, report: ProgressFn) -> DriverTrack:
    """Pass one: follow the face through the driver, place the backend's crop on it, choose the reference."""
    frames = clock.timed("decode", driver_frames(path, info, config))
    t0, decoded = time.perf_counter(), clock.seconds["decode"]
    driver = track(frames, detector, config.track, config.driver_face_index, float(info.fps), path,
                   on_frame=lambda i: report("track", i + 1, info.frame_count))
    clock.seconds["track"] += time.perf_counter() - t0 - (clock.seconds["decode"] - decoded)
    warnings = []
    short = short_driver_warning(driver.n_frames, info.frame_count)
    if short:
        warnings.append(short)
        log.warning("%s: %s", path, short)
    if driver.n_missing:
        log.warning("%s: no face in %d of %d frames; bridged from neighbouring frames",
                    path, driver.n_missing, driver.n_frames)
    boxes = smooth_boxes(face_box(driver.landmarks, backend.crop), float(info.fps), config.crop_smooth_seconds)
    ref = choose_reference(config.reference, driver, source.landmarks)
    log.info("reference frame: %d (%s)", ref, config.reference)
    return DriverTrack(path, info, driver, [Crop.from_box(b, backend.size) for b in boxes], ref, warnings)


def short_driver_warning(decoded: int, expected: int) -> str | None:
    """A one-line warning when decoding gave clearly fewer frames than the container says it holds (a cut
    or damaged file); None within the header estimate's usual slack (2 frames or 2%)."""
    if expected - decoded <= max(2, 0.02 * expected):
        return None
    return (f"only {decoded} of the {expected} frames the container lists could be decoded (damaged or cut "
            f"file?); the output has {decoded} frames")


def render(source: Source, driver: DriverTrack, backend: Backend, output: Path, config: AnimateConfig,
           audio: Audio | None, clock: _Clock, report: ProgressFn) -> AnimateResult:
    """Pass two: animate every driver frame, paste back, mark, encode, mux and sign into `output`."""
    path, info = driver.path, driver.info
    t = time.perf_counter()
    reference_image = None
    if backend.needs_driver_images:
        reference_image = next(x for i, x in enumerate(driver_frames(path, info, config)) if i == driver.reference)
    backend.prepare(source.face, driver.frame(driver.reference, reference_image))
    paste = None
    if config.paste_back:  # a backend that knows where its output can differ says so (no colour drift either)
        own_mask = backend.paste_mask()
        paste = (PasteBack(source.image, source.crop, colour_match=False, mask=own_mask) if own_mask is not None
                 else PasteBack(source.image, source.crop))
    t = clock.add("setup", t)

    n = driver.track.n_frames
    if backend.needs_driver_images:
        images: Iterator[np.ndarray | None] = clock.timed("decode", driver_frames(path, info, config))
    else:
        images = iter([None] * n)
    output_id = config.output_id or str(uuid.uuid4())
    payload = Payload.new(output_id)
    marker = VideoMarker(payload)
    unsigned = temporary_path(output, "unsigned")
    writer = VideoWriter(unsigned, info.fps, crf=config.crf, preset=config.preset)
    try:
        batch: list[DriverFrame] = []
        done = 0
        for i, image in zip(range(n), images):
            t = time.perf_counter()
            batch.append(driver.frame(i, image))
            t = clock.add("crop", t)
            if len(batch) == config.batch or i == n - 1:
                animated = backend.animate(batch)
                t = clock.add("animate", t)
                for crop in animated:
                    frame = paste(crop) if paste is not None else crop
                    t = clock.add("paste", t)
                    frame = marker.mark(draw_label(frame) if config.visible_label else frame)
                    t = clock.add("mark", t)
                    writer.write(frame)
                    t = clock.add("encode", t)
                done += len(batch)
                batch = []
                report("render", done, n)
        if writer.frames_written < n:  # the second decode gave fewer frames: hold the last one
            log.warning("%s: second decode gave %d of %d frames", path, writer.frames_written, n)
        t = time.perf_counter()
        sound = audio if audio is not None else (read_audio(path) if info.has_audio else None)
        if sound is not None and config.duration:  # the sound ends with the frames
            sound = Audio(sound.samples[:, : round(n / info.fps * sound.sample_rate)], sound.sample_rate)
        t = clock.add("mux", t)
        if sound is not None:
            sound = mark_audio(sound, payload)
        t = clock.add("mark", t)
        writer.close(audio=sound)
        t = clock.add("mux", t)
        settings = {"tool": "reenact animate", "backend": backend.name, "size": backend.size,
                    "reference": config.reference, "visible_label": config.visible_label}
        sign_mp4(unsigned, output, Claims(payload, output_id, config.consent_sha256, settings))
        clock.add("mark", t)
    except BaseException:
        writer.abort()
        raise
    finally:
        unsigned.unlink(missing_ok=True)
    size = (source.image.shape[1], source.image.shape[0]) if paste is not None else (backend.size, backend.size)
    return AnimateResult(output=output, frames=writer.frames_written, fps=info.fps, size=size,
                         reference_index=driver.reference, missing_frames=driver.track.n_missing,
                         audio=sound is not None, timings=dict(clock.seconds), output_id=output_id,
                         payload=payload.hex(), crop_size=backend.size, driver=driver,
                         driver_frames_expected=info.frame_count, warnings=list(driver.warnings))


def animate(
    source_path: str | Path,
    driver_path: str | Path,
    output: str | Path,
    config: AnimateConfig | None = None,
    audio: Audio | None = None,
    progress: ProgressFn | None = None,
    backend: Backend | None = None,
) -> AnimateResult:
    """Animate the portrait at `source_path` with the driver video; write an MP4.

    The driver's own audio track is muxed unless `audio` (e.g. converted
    speech) is given. Nothing is written at `output` unless the run succeeds.
    """
    config = config or AnimateConfig()
    source_path, driver_path = Path(source_path), Path(driver_path)
    output = check_output_path(output, (".mp4",))
    if output.resolve() in (source_path.resolve(), driver_path.resolve()):
        raise ReenactError("output would overwrite an input; choose another file name", output)
    clear_stale_partials(output)
    clock = _Clock()
    report = progress or (lambda stage, done, total: None)
    t = time.perf_counter()
    info = probe(driver_path)
    if config.fps or config.duration:  # resampled to the config's rate, cut to its duration
        fps = Fraction(config.fps) if config.fps else info.fps
        frames = min(info.frame_count, round(config.duration * fps)) if config.duration else info.frame_count
        info = replace(info, fps=fps, frame_count=frames)
    detector = FaceDetector()
    if backend is not None:  # a backend object works at its own size
        config = replace(config, size=backend.size)
    backend_cls = type(backend) if backend is not None else backend_class(config.backend)
    source = prepare_source(source_path, detector, config, backend_cls)
    backend = backend or backend_cls(size=source.crop.size, **config.backend_options)
    clock.add("setup", t)
    driver = track_driver(driver_path, info, detector, config, backend, source, clock, report)
    return render(source, driver, backend, output, config, audio, clock, report)


# ------------------------------------------------------------------ the whole job

def _model_sha256(model: Path) -> str:
    """sha256 of a voice model's files (joined by + when it has several, e.g. a so-vits-svc config and generator)."""

    return "+".join(sha256_file(p) for p in model_files(model).values())


@dataclass
class MakeConfig:
    """Settings of `reenact make`."""

    animate: AnimateConfig = field(default_factory=AnimateConfig)
    transpose: str = "auto"  # voice conversion: "auto" or semitones
    voice_options: dict = field(default_factory=dict)  # the voice backend's options (None: not given)
    measure: bool = True  # face and voice measures in the report
    # "full": evaluate_face tracks output and driver again, detecting the face on every frame (the reference);
    # "fast": reuses the render's driver landmarks, tracks the output from keyframes, identity on a few frames
    # (what a study's gallery needs, at a small part of a clip's time; docs/study.md)
    measure_mode: str = "full"
    revoice: bool = True  # False keeps the driver's own speech (a study's `face` condition)
    loudness: float | None = None  # LUFS (EBU R128) the sound is brought to before it is marked; None: as it is


def make(subject_name: str, driver_path: str | Path, output: str | Path, config: MakeConfig | None = None,
         subjects_dir: Path | None = None, progress: ProgressFn | None = None) -> dict:
    """Animate a subject with a driver, re-voice the driver's speech, mark, measure; write OUT and OUT.json.

    Returns the report (also written as JSON beside the output): inputs' hashes,
    backends, settings, timings, and the face and voice measures.
    """
    import json

    config = config or MakeConfig()
    report_fn = progress or (lambda stage, done, total: None)
    driver_path, output = Path(driver_path), check_output_path(output, (".mp4",))
    if output.resolve() == driver_path.resolve():
        raise ReenactError("output would overwrite the driver; choose another file name", output)
    parse_transpose(config.transpose)
    json_path = output.with_suffix(".json")
    clear_stale_partials(output), clear_stale_partials(json_path)
    if config.measure_mode not in ("full", "fast"):
        raise ReenactError(f"measure mode must be full or fast, not {config.measure_mode!r}")
    subject = load_subject(subject_name, subjects_dir)
    subject.check_consent()  # the consent document is still the one the record was made from
    info = probe(driver_path)
    timings: dict[str, float] = {}
    t = time.perf_counter()

    original = read_audio(driver_path) if info.has_audio else None
    if original is not None and config.animate.duration:  # only the part the video keeps
        original = Audio(original.samples[:, : round(config.animate.duration * original.sample_rate)],
                         original.sample_rate)
    converted = None
    model = subject.voice_model_path if config.revoice else None
    voice_backend = None
    if original is not None and model is not None and model.exists():
        voice_backend = detect_backend(model)
        report_fn("voice", 0, 1)
        converted = convert_audio(original, model, config.transpose, options=config.voice_options)
        report_fn("voice", 1, 1)
    elif original is not None and config.revoice:
        if model is not None:
            raise ReenactError(f"subject {subject.name}'s voice model is missing; recreate the subject", model)
        log.warning("subject %s has no voice model: the driver's own voice is kept", subject.name)
    elif model is not None:
        log.warning("%s: the driver has no audio track, so there is no speech to re-voice: the output is silent",
                    driver_path)
    timings["voice"] = time.perf_counter() - t

    animate_config = replace(config.animate, consent_sha256=subject.consent.record_sha256(),
                             face_index=subject.face_index)
    sound = converted if converted is not None else original
    if sound is not None and config.loudness is not None:
        sound = normalise_loudness(sound, config.loudness)
    # The video and its report are written as temporaries and renamed together at the end: an
    # interrupted or failed run changes neither OUT.mp4 nor OUT.json.
    video_tmp, json_tmp = temporary_path(output), temporary_path(json_path)
    try:
        report = _make_files(subject, driver_path, output, video_tmp, animate_config, config, sound, original,
                             converted, voice_backend, model, timings, progress)
        json_tmp.write_text(json.dumps(report, indent=2, default=float))
        replace_together([(video_tmp, output), (json_tmp, json_path)])
    finally:
        video_tmp.unlink(missing_ok=True)
        json_tmp.unlink(missing_ok=True)
    return report


def _make_files(subject, driver_path: Path, output: Path, video_tmp: Path, animate_config: AnimateConfig,
                config: MakeConfig, sound, original, converted, voice_backend, model, timings: dict,
                progress: ProgressFn | None) -> dict:
    """make's animate and measures, writing the video at `video_tmp`; returns the report (for `output`)."""
    result = animate(subject.portrait_path, driver_path, video_tmp, animate_config, audio=sound, progress=progress)
    timings.update({f"animate.{k}": v for k, v in result.timings.items()})

    measures: dict = {}
    if config.measure:
        from reenact.evaluate.face import evaluate_face

        t = time.perf_counter()
        if config.measure_mode == "fast":
            from reenact.evaluate.face import evaluate_face_fast

            measures["face"] = evaluate_face_fast(video_tmp, subject.portrait_path, result.driver.track,
                                                  face_index=subject.face_index, progress=progress)
        else:
            measures["face"] = evaluate_face(video_tmp, subject.portrait_path, driver_path, progress=progress)
        if "video" in measures["face"]:
            measures["face"]["video"] = str(output)
        timings["measure.face"] = time.perf_counter() - t
        if converted is not None and subject.voice_dataset:
            from reenact.evaluate.voice import evaluate_voice

            voice = evaluate_voice(converted, subject.folder / subject.voice_dataset, original)
            voice.pop("converted", None), voice.pop("original", None)
            voice["rtf"] = timings["voice"] / max(original.duration, 1e-6)
            measures["voice"] = voice
        timings["measure"] = time.perf_counter() - t

    report = {
        "output": str(output), "output_id": result.output_id, "watermark_payload": result.payload,
        "subject": {"name": subject.name, "consent_record_sha256": subject.consent.record_sha256(),
                    "consent_document_sha256": subject.consent.sha256, "signer": subject.consent.signer},
        "inputs": {"driver": str(driver_path), "driver_sha256": sha256_file(driver_path),
                   "portrait_sha256": sha256_file(subject.portrait_path),
                   "voice_model_sha256": _model_sha256(model) if model is not None and model.exists() else None},
        "backends": {"motion": config.animate.backend, "voice": voice_backend if converted is not None else None},
        "settings": {"size": result.crop_size, "reference": config.animate.reference,
                     "reference_index": result.reference_index, "crf": config.animate.crf,
                     "visible_label": config.animate.visible_label, "transpose": config.transpose,
                     "voice_options": {k: v for k, v in config.voice_options.items() if v is not None}
                     if converted is not None else {}},
        "video": {"frames": result.frames, "fps": float(result.fps), "size": list(result.size),
                  "missing_face_frames": result.missing_frames, "audio": result.audio,
                  "driver_frames_decoded": result.frames, "driver_frames_in_container": result.driver_frames_expected},
        "warnings": result.warnings,
        "timings": {k: round(v, 3) for k, v in timings.items()},
        "measures": measures,
    }
    return report
