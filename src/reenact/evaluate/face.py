"""Face measures of an animated video: identity, motion fidelity, jitter, lost faces.

`evaluate_face` follows the face through the output and through the driver
with the same tracker the pipeline uses, and compares:

- identity: dlib's 128-d embedding of the source face against output frames
  sampled evenly (median and 90th percentile distance; 0.6 is dlib's
  same-person threshold);
- motion: each video's landmarks relative to its own first frame, in units of
  its own face size (eye-centre distance), so the portrait's size and place in
  the frame do not matter: mean landmark error, and Pearson correlations of
  mouth opening, eye opening and head yaw/pitch proxies, frame by frame;
- jitter: mean landmark acceleration |x[t+1] - 2x[t] + x[t-1]| per frame in
  face-size units, for output and driver alike, so they can be compared;
- frames of the output where no face was found.

Both videos are tracked the same way, with a fresh detection on every frame
(a consistent landmark box, whatever the frame size; keyframe tracking would
add its own jumps). Motion is compared on the tracker's smoothed landmarks
(the same smoothing on both sides lowers dlib's noise floor); jitter uses the
unsmoothed ones (`Track.raw`), so smoothing does not hide it. Noise floor,
measured on the bundled driver against a re-encoded copy placed in a bigger
frame (1x and 0.75x): mouth correlation 0.95-0.97, yaw 0.99, pitch 0.96,
eyes 0.84-0.89, landmark error 0.025 face sizes, jitter ratio 1.2-1.4, and
1-4 of 169 frames where the detector missed the face.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Callable

import numpy as np

from reenact.errors import ReenactError
from reenact.files import atomic_write
from reenact.face import pose
from reenact.face.detect import Face, FaceDetector, FaceEmbedder, Track, TrackConfig, choose_face, track
from reenact.media.image import load_image
from reenact.media.video import iter_frames, probe

log = logging.getLogger(__name__)

SAME_PERSON = 0.6  # dlib's threshold on embedding distance

ProgressFn = Callable[[str, int, int], None]


# ---------------------------------------------------------------- measures on landmark arrays

def face_size(landmarks: np.ndarray, found: np.ndarray | None = None) -> float:
    """Median eye-centre distance over the frames where a face was found."""
    scale = pose.face_scale(landmarks if found is None or not found.any() else landmarks[found])
    return float(max(np.median(scale), 1e-6))


def relative_motion(landmarks: np.ndarray, found: np.ndarray | None = None) -> np.ndarray:
    """(N, 68, 2) landmarks minus the first frame's, in units of face size."""
    return (landmarks - landmarks[:1]) / face_size(landmarks, found)


def expression_motion(landmarks: np.ndarray, found: np.ndarray | None = None) -> np.ndarray:
    """Like `relative_motion`, after fitting each frame onto the first by a similarity.

    What is left is the face's own deformation (mouth, lids, brows), without
    head translation, rotation in the image plane and scale.
    """
    z = landmarks[..., 0].astype(np.float64) + 1j * landmarks[..., 1]
    ref = z[0] - z[0].mean()
    p = z - z.mean(axis=1, keepdims=True)
    a = (np.conj(p) * ref).sum(axis=1, keepdims=True) / np.maximum((np.abs(p) ** 2).sum(axis=1, keepdims=True), 1e-12)
    d = a * p - ref
    return (np.stack([d.real, d.imag], -1) / face_size(landmarks, found)).astype(np.float32)


def landmark_error(a: np.ndarray, b: np.ndarray) -> float:
    """Mean Euclidean distance between corresponding points of two (N, 68, 2) arrays."""
    return float(np.linalg.norm(a - b, axis=-1).mean())


def pearson(a: np.ndarray, b: np.ndarray) -> float | None:
    """Pearson correlation, or None when either series is (nearly) constant or too short."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if len(a) < 3:
        return None
    a, b = a - a.mean(), b - b.mean()
    den = np.sqrt((a * a).sum() * (b * b).sum())
    if den < 1e-12:
        return None
    return float(np.clip((a * b).sum() / den, -1.0, 1.0))


def gain(output: np.ndarray, driver: np.ndarray) -> float | None:
    """How much a proxy varies in the output relative to the driver (ratio of standard deviations)."""
    sd = float(np.std(driver))
    return float(np.std(output)) / sd if sd > 1e-12 else None


def jitter(landmarks: np.ndarray, found: np.ndarray | None = None) -> float | None:
    """Mean landmark acceleration magnitude per frame, in units of face size.

    Only frame triples where all three frames had a detected face count, so
    bridged (interpolated) gaps neither add nor hide jitter.
    """
    if len(landmarks) < 3:
        return None
    acc = np.linalg.norm(landmarks[2:] - 2 * landmarks[1:-1] + landmarks[:-2], axis=-1).mean(axis=-1)
    if found is not None:
        ok = found[2:] & found[1:-1] & found[:-2]
        if not ok.any():
            return None
        acc = acc[ok]
    return float(acc.mean() / face_size(landmarks, found))


def blinks(eyes: np.ndarray, closed: float = 0.7, min_frames: int = 4) -> list[tuple[int, int]]:
    """Runs of frames (start, end exclusive) at least `min_frames` long where the eye aspect ratio is under
    `closed` times its open level (75th percentile over the clip): blinks and shut eyes."""
    eyes = np.asarray(eyes, np.float64)
    if len(eyes) == 0:
        return []
    shut = np.r_[False, pose.eyes_shut(eyes, closed), False]
    edges = np.flatnonzero(np.diff(shut.astype(int)))
    return [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2]) if b - a >= min_frames]


def blinks_shown(output_eyes: np.ndarray, driver_eyes: np.ndarray, closed: float = 0.7,
                 min_frames: int = 4) -> tuple[int, int]:
    """(driver blinks of at least `min_frames` frames, how many of them the output shows as a shut eye).

    A blink shows when the output's eye aspect ratio, within a frame of the
    driver's run, falls under `closed` times the output's own open level.
    """
    events = blinks(driver_eyes, closed, min_frames)
    shut = pose.eyes_shut(output_eyes, closed) if len(output_eyes) else np.zeros(0, bool)
    shown = sum(bool(shut[max(a - 1, 0):b + 1].any()) for a, b in events)
    return len(events), shown


PROXIES = {"mouth": pose.mouth_opening, "eyes": pose.eye_opening, "yaw": pose.yaw, "pitch": pose.pitch}


def motion_measures(output: np.ndarray, driver: np.ndarray, output_found: np.ndarray | None = None,
                    driver_found: np.ndarray | None = None) -> dict:
    """Compare two frame-aligned landmark tracks of equal length (N, 68, 2).

    The driver's relative motion is turned by the median difference in roll
    between the two, so a portrait that leans is not penalised.
    `landmark_error` is the mean distance between the relative motions;
    `static_error` is what an output that did not move at all would score
    (the driver's own mean relative motion), for scale. `expression_error`
    and `expression_static_error` are the same after removing each frame's
    head motion (similarity fit to the first frame): the face's own
    deformation, which a portrait animator can follow fully even where it
    keeps the head steadier than the driver's. `<proxy>_corr` are
    Pearson correlations of mouth opening, eye opening, yaw and pitch (None
    when either series is constant); `<proxy>_gain` the ratio of their
    standard deviations, output over driver: a correlation means little when
    the gain is near 0 (an output that barely moves correlates by chance).
    """
    a, b = relative_motion(output, output_found), relative_motion(driver, driver_found)
    # The portrait may lean differently from the driver: turn the driver's motion by the median roll difference.
    angle = float(np.median(np.angle(np.exp(1j * (pose.roll(output) - pose.roll(driver))))))
    c, s = np.cos(angle), np.sin(angle)
    turn = np.array([[c, s], [-s, c]], np.float32)
    b = b @ turn
    ea, eb = expression_motion(output, output_found), expression_motion(driver, driver_found) @ turn
    return {
        "landmark_error": landmark_error(a, b),
        "static_error": landmark_error(np.zeros_like(b), b),
        "expression_error": landmark_error(ea, eb),
        "expression_static_error": landmark_error(np.zeros_like(eb), eb),
        **{f"{name}_corr": pearson(fn(output), fn(driver)) for name, fn in PROXIES.items()},
        **{f"{name}_gain": gain(fn(output), fn(driver)) for name, fn in PROXIES.items()},
        **dict(zip(("blinks_driver", "blinks_shown"), blinks_shown(pose.eye_opening(output), pose.eye_opening(driver)))),
    }


def identity_stats(distances: np.ndarray) -> dict:
    """Summary of embedding distances between the source and output frames."""
    d = np.asarray(distances, np.float64)
    if d.size == 0:
        return {"median": None, "p90": None, "under_threshold": None, "threshold": SAME_PERSON, "samples": 0}
    return {"median": float(np.median(d)), "p90": float(np.percentile(d, 90)),
            "under_threshold": float((d < SAME_PERSON).mean()), "threshold": SAME_PERSON, "samples": int(d.size)}


def sample_indices(candidates: np.ndarray, k: int) -> np.ndarray:
    """Up to `k` entries of `candidates`, spread evenly from first to last."""
    if len(candidates) <= k:
        return np.asarray(candidates)
    return np.asarray(candidates)[np.round(np.linspace(0, len(candidates) - 1, k)).astype(int)]


def _landmark_face(lm: np.ndarray) -> Face:
    box = np.array([lm[:, 0].min(), lm[:, 1].min(), lm[:, 0].max(), lm[:, 1].max()], np.float32)
    return Face(box=box, landmarks=lm)


# ---------------------------------------------------------------- the evaluation

def _track_video(path: Path, detector: FaceDetector, config: TrackConfig, face_index: int, stage: str,
                 report: ProgressFn) -> Track | None:
    """Track the face through a video; None when no frame has a face."""
    info = probe(path)
    try:
        return track(iter_frames(path, info.fps), detector, config, face_index, float(info.fps), path,
                     on_frame=lambda i: report(stage, i + 1, info.frame_count))
    except ReenactError as exc:
        if "no face found" in exc.message:
            return None
        raise


def evaluate_face(
    video: Path,
    source: Path,
    driver: Path,
    identity_samples: int = 32,
    progress: ProgressFn | None = None,
    face_index: int = 0,
    series: bool = False,
) -> dict:
    """Identity, motion fidelity, jitter and lost faces of `video` (made from `source` and `driver`).

    Returns a JSON-serialisable dict; measures that cannot be computed are None.
    With `series`, it also holds the per-frame proxies (`report["proxies"]`: mouth,
    eyes, yaw, pitch of output and driver, and which frames had a face) for `plot_series`.
    """

    video, source, driver = Path(video), Path(source), Path(driver)
    report = progress or (lambda stage, done, total: None)
    detector = FaceDetector()
    config = TrackConfig(keyframe_interval=1, detect_max_side=640)  # outputs are whole portraits: faces may be small

    image = load_image(source)
    face = choose_face(detector.detect(image, upsample=1), face_index, source)
    embedder = FaceEmbedder()
    source_embedding = embedder.embed(image, face)

    out = _track_video(video, detector, config, face_index, "track output", report)
    drv = _track_video(driver, detector, config, face_index, "track driver", report)
    if drv is None:
        raise ReenactError("no face found in any frame of the driver video", driver)
    if out is None:
        n = sum(1 for _ in iter_frames(video))
        log.warning("%s: no face found in any frame", video)
        return {"video": str(video), "source": str(source), "driver": str(driver), "frames": n,
                "frames_output": n, "frames_driver": drv.n_frames, "no_face_frames": n,
                "driver_no_face_frames": drv.n_missing, "identity": identity_stats(np.empty(0)),
                "motion": {"landmark_error": None, "static_error": None, "expression_error": None,
                           "expression_static_error": None, "blinks_driver": None, "blinks_shown": None,
                           **{f"{k}_{m}": None for m in ("corr", "gain") for k in PROXIES}},
                "jitter": {"output": None, "driver": jitter(drv.raw, drv.found), "ratio": None}}

    # Identity: the source against output frames with a detected face, spread evenly.
    chosen = set(sample_indices(np.flatnonzero(out.found), identity_samples).tolist())
    distances = []
    for i, frame in enumerate(iter_frames(video)):
        if i in chosen:
            e = embedder.embed(frame, _landmark_face(out.raw[i]))
            distances.append(float(np.linalg.norm(e - source_embedding)))
            report("identity", len(distances), len(chosen))
            if len(distances) == len(chosen):
                break

    # Motion: frame-aligned, the longer one truncated.
    n = min(out.n_frames, drv.n_frames)
    if abs(out.n_frames - drv.n_frames) > 1:
        log.warning("%s has %d frames, the driver %d; comparing the first %d",
                    video, out.n_frames, drv.n_frames, n)
    motion = motion_measures(out.landmarks[:n], drv.landmarks[:n], out.found[:n], drv.found[:n])
    j_out, j_drv = jitter(out.raw, out.found), jitter(drv.raw, drv.found)
    extra = {"proxies": proxy_series(out.landmarks[:n], drv.landmarks[:n], out.found[:n], drv.found[:n],
                                    probe(driver).fps)} if series else {}
    return {
        "video": str(video), "source": str(source), "driver": str(driver),
        "frames": n, "frames_output": out.n_frames, "frames_driver": drv.n_frames,
        "no_face_frames": out.n_missing, "driver_no_face_frames": drv.n_missing,
        "identity": identity_stats(np.array(distances)),
        "motion": motion,
        "jitter": {"output": j_out, "driver": j_drv,
                   "ratio": j_out / j_drv if j_out is not None and j_drv else None},
        **extra,
    }


@functools.lru_cache(maxsize=16)
def _source_embedding(path: str, size: int, mtime_ns: int, face_index: int) -> np.ndarray:
    """The portrait's face embedding, once per portrait file and process (a study makes many clips of one)."""
    image = load_image(path)
    detector = FaceDetector()
    faces = detector.detect(image, upsample=0) if max(image.shape[:2]) > 400 else []  # 4x cheaper, enough for
    if len(faces) <= face_index:                                                       # a large portrait's face
        faces = detector.detect(image, upsample=1)
    return FaceEmbedder().embed(image, choose_face(faces, face_index, Path(path)))


def evaluate_face_fast(
    video: Path,
    source: Path,
    driver: Track,
    identity_samples: int = 3,
    keyframe_seconds: float = 2.0,
    face_index: int = 0,
    progress: ProgressFn | None = None,
) -> dict:
    """`evaluate_face`'s measures of a video `animate` has just made, at a small part of its cost.

    The driver is not tracked again: `driver` is the render's own track (`AnimateResult.driver.track`, frame
    for frame the output's). The output is decoded once and tracked with a detection every `keyframe_seconds`
    and the landmark predictor between (a few ms a frame: the face stays inside the pasted crop, so it is not
    lost between detections); identity is the distance on `identity_samples` frames spread over the clip.
    `evaluate_face` stays the reference (a fresh detection on every frame of both videos, 32 identity samples). Adds "series": per-frame mouth
    opening of output and driver (inner-lip gap over face scale), for plots.
    """
    video, source = Path(video), Path(source)
    report = progress or (lambda stage, done, total: None)
    detector = FaceDetector()
    embedder = FaceEmbedder()
    stat = source.stat()
    source_embedding = _source_embedding(str(source.resolve()), stat.st_size, stat.st_mtime_ns, face_index)
    info = probe(video)
    n_expected = driver.n_frames
    chosen = set(np.round(np.linspace(0, max(n_expected - 1, 0), min(identity_samples, n_expected))).astype(int)
                 .tolist())
    kept: dict[int, np.ndarray] = {}

    def frames():
        for i, frame in enumerate(iter_frames(video, info.fps)):
            if i in chosen:
                kept[i] = frame
            yield frame

    config = TrackConfig(keyframe_interval=max(1, round(keyframe_seconds * float(info.fps))), detect_max_side=640)
    try:
        out = track(frames(), detector, config, face_index, float(info.fps), video,
                    on_frame=lambda i: report("measure", i + 1, n_expected))
    except ReenactError as exc:
        if "no face found" not in exc.message:
            raise
        out = None
    distances = []
    if out is not None:
        for i in sorted(kept):
            if i < out.n_frames and out.found[i]:
                e = embedder.embed(kept[i], _landmark_face(out.raw[i]))
                distances.append(float(np.linalg.norm(e - source_embedding)))
    n_out = out.n_frames if out is not None else driver.n_frames
    result = {"mode": "fast", "video": str(video), "source": str(source), "driver": "render track",
              "frames_output": n_out, "frames_driver": driver.n_frames,
              "driver_no_face_frames": driver.n_missing, "identity": identity_stats(np.array(distances))}
    if out is None:
        log.warning("%s: no face found in any frame", video)
        return {**result, "frames": n_out, "no_face_frames": n_out,
                "motion": {"landmark_error": None, "static_error": None, "expression_error": None,
                           "expression_static_error": None,
                           **{f"{k}_{m}": None for m in ("corr", "gain") for k in PROXIES}},
                "jitter": {"output": None, "driver": jitter(driver.raw, driver.found), "ratio": None},
                "series": {"mouth_output": [], "mouth_driver": []}}
    n = min(out.n_frames, driver.n_frames)
    motion = motion_measures(out.landmarks[:n], driver.landmarks[:n], out.found[:n], driver.found[:n])
    j_out, j_drv = jitter(out.raw, out.found), jitter(driver.raw, driver.found)
    mouth_out, mouth_drv = pose.mouth_opening(out.landmarks[:n]), pose.mouth_opening(driver.landmarks[:n])
    return {**result, "frames": n, "no_face_frames": out.n_missing, "motion": motion,
            "jitter": {"output": j_out, "driver": j_drv,
                       "ratio": j_out / j_drv if j_out is not None and j_drv else None},
            "series": {"mouth_output": np.round(mouth_out, 4).tolist(),
                       "mouth_driver": np.round(mouth_drv, 4).tolist()}}


def proxy_series(output: np.ndarray, driver: np.ndarray, output_found: np.ndarray, driver_found: np.ndarray,
                 fps: float) -> dict:
    """Per-frame mouth opening, eye opening, yaw and pitch of output and driver (lists, JSON-ready)."""
    out = {name: {"output": fn(output).astype(float).tolist(), "driver": fn(driver).astype(float).tolist()}
           for name, fn in PROXIES.items()}
    out["found"] = {"output": output_found.astype(bool).tolist(), "driver": driver_found.astype(bool).tolist()}
    out["fps"] = float(fps)
    return out


def plot_series(report: dict, path: Path) -> None:
    """Mouth opening, eye opening, yaw and pitch of output against driver over time, as an image file.

    Each panel's title gives the correlation and the gain (output spread over
    driver spread); output frames without a face are shaded. Yaw and pitch are
    shown relative to each video's first frame (their absolute values depend on
    the face's shape, not on its motion).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series, motion = report["proxies"], report["motion"]
    fps = series["fps"] or 25.0
    titles = {"mouth": "mouth opening (inner-lip gap / eye distance)", "eyes": "eye opening (eye aspect ratio)",
              "yaw": "yaw (left-right turn proxy, from frame 0)", "pitch": "pitch (nod proxy, from frame 0)"}
    fig, axes = plt.subplots(4, 1, figsize=(10, 9), sharex=True)
    for ax, (name, title) in zip(axes, titles.items()):
        o, d = np.asarray(series[name]["output"]), np.asarray(series[name]["driver"])
        if name in ("yaw", "pitch") and len(o):
            o, d = o - o[0], d - d[0]
        t = np.arange(len(o)) / fps
        ax.plot(t, d, color="0.45", lw=1.2, label="driver")
        ax.plot(t, o, color="tab:red", lw=1.2, label="output")
        lost = ~np.asarray(series["found"]["output"], bool)
        for i in np.flatnonzero(lost):
            ax.axvspan(t[i] - 0.5 / fps, t[i] + 0.5 / fps, color="tab:orange", alpha=0.25, lw=0)
        corr, g = motion.get(f"{name}_corr"), motion.get(f"{name}_gain")
        ax.set_title(f"{title}: r = {_f(corr, 2)}, gain = {_f(g, 2)}", fontsize=9, loc="left")
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, loc="upper right")
    axes[-1].set_xlabel("seconds")
    fig.suptitle(f"{Path(report['video']).name}: output vs driver ({Path(report['driver']).name})", fontsize=10)
    fig.tight_layout()
    try:
        with atomic_write(path) as tmp:  # the suffix stays: matplotlib picks the format from it
            fig.savefig(tmp, dpi=90)
    finally:
        plt.close(fig)


# ---------------------------------------------------------------- report

def _f(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


_PROXY_NOTES = {"mouth": "inner-lip gap", "eyes": "eye aspect ratio", "yaw": "left-right turn proxy",
                "pitch": "nod proxy"}


def format_face_report(report: dict) -> str:
    """The measures as a plain-text table."""
    ident, motion, jit = report["identity"], report["motion"], report["jitter"]
    rows = [
        ("frames", f"{report['frames']}", f"output {report['frames_output']}, driver {report['frames_driver']}"),
        ("no face", f"{report['no_face_frames']}", f"output frames without a detected face "
                                                   f"(driver: {report['driver_no_face_frames']})"),
        ("identity median", _f(ident["median"]), f"dlib distance, source vs {ident['samples']} output frames "
                                                 f"(< {ident['threshold']}: same person)"),
        ("identity p90", _f(ident["p90"]), "90th percentile"),
        ("identity < 0.6", "n/a" if ident["under_threshold"] is None else f"{100 * ident['under_threshold']:.0f}%",
         "share of sampled frames under the threshold"),
    ]
    rows += [
        ("landmark error", _f(motion["landmark_error"]),
         f"relative motion vs driver, face sizes (a still output: {_f(motion['static_error'])})"),
        ("expression error", _f(motion["expression_error"]),
         f"the same without head motion (a still output: {_f(motion['expression_static_error'])})"),
        *[(f"{name} corr", _f(motion[f"{name}_corr"]),
           f"Pearson vs driver, {note} (gain {_f(motion[f'{name}_gain'], 2)}: output/driver spread)")
          for name, note in _PROXY_NOTES.items()],
    ]
    if motion.get("blinks_driver") is not None:
        rows.append(("blinks shown", f"{motion['blinks_shown']}/{motion['blinks_driver']}",
                     "driver's shut eyes of 4+ frames (EAR under 0.7 of its open level) shut in the output too"))
    rows.append(("jitter", f"{_f(jit['output'], 4)} / {_f(jit['driver'], 4)}",
                 f"output / driver, landmark acceleration per frame in face sizes (ratio {_f(jit['ratio'], 2)})"))
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    lines = [f"{'measure':<{w0}}  {'value':>{w1}}  note", f"{'-' * w0}  {'-' * w1}  ----"]
    lines += [f"{a:<{w0}}  {b:>{w1}}  {c}" for a, b, c in rows]
    return "\n".join(lines)
