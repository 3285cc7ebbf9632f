"""Face detection, 68-point landmarks, identity embeddings and tracking, on dlib.

The weights ship inside the `face_recognition_models` package (no download).
`FaceDetector.detect` finds faces in a still image; `track` follows one face
through a video: full detection on keyframes, landmark tracking in between
(the landmark predictor seeded with a box derived from the previous frame's
landmarks), frames with no face bridged by interpolation, and landmarks then
smoothed over time with a filter that keeps blinks and lip motion.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import cv2
import dlib
import numpy as np
from scipy.signal import savgol_filter

from reenact.errors import ReenactError

log = logging.getLogger(__name__)


def models_dir() -> Path:
    """Folder holding dlib's model files from the face_recognition_models package."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise ReenactError("the face_recognition_models package is missing; pip install face_recognition_models")
    return Path(list(spec.submodule_search_locations)[0]) / "models"


@dataclass
class Face:
    """One detected face: detector box (x0, y0, x1, y1) and 68 landmarks (x, y)."""

    box: np.ndarray
    landmarks: np.ndarray
    score: float = 0.0

    @property
    def area(self) -> float:
        x0, y0, x1, y1 = self.box
        return float(max(x1 - x0, 0) * max(y1 - y0, 0))


def _rect(box: np.ndarray) -> dlib.rectangle:
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    return dlib.rectangle(x0, y0, x1, y1)


@functools.lru_cache(maxsize=None)
def _dlib_model(name: str):
    """dlib's models, loaded once per process (2-3 s each time otherwise; they hold no per-call state)."""
    if name == "detector":
        return dlib.get_frontal_face_detector()
    if name == "predictor":
        return dlib.shape_predictor(str(models_dir() / "shape_predictor_68_face_landmarks.dat"))
    return dlib.face_recognition_model_v1(str(models_dir() / "dlib_face_recognition_resnet_model_v1.dat"))


class FaceDetector:
    """dlib's HOG face detector plus the 68-point shape predictor."""

    def __init__(self, upsample: int = 1, max_side: int = 800) -> None:
        self.upsample = upsample
        self.max_side = max_side
        self._detector = _dlib_model("detector")
        self._predictor = _dlib_model("predictor")

    def boxes(self, image: np.ndarray, upsample: int | None = None, max_side: int | None = None) -> list[tuple[np.ndarray, float]]:
        """Detector boxes in image coordinates with scores, largest first."""
        max_side = max_side or self.max_side
        upsample = self.upsample if upsample is None else upsample
        h, w = image.shape[:2]
        if min(h, w) < 8:  # too small to hold a face (and a 0-pixel side would divide by zero)
            return []
        scale = min(1.0, max_side / max(h, w))
        small = cv2.resize(image, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA) if scale < 1 else image
        rects, scores, _ = self._detector.run(np.ascontiguousarray(small), upsample, 0.0)
        found = [(np.array([r.left(), r.top(), r.right(), r.bottom()], np.float32) / scale, float(s))
                 for r, s in zip(rects, scores)]
        return sorted(found, key=lambda f: -(f[0][2] - f[0][0]) * (f[0][3] - f[0][1]))

    def landmarks(self, image: np.ndarray, box: np.ndarray) -> np.ndarray:
        """68 landmarks (float32, (68, 2)) for the face in `box`."""
        shape = self._predictor(np.ascontiguousarray(image), _rect(box))
        return np.array([(p.x, p.y) for p in shape.parts()], np.float32)

    def detect(self, image: np.ndarray, upsample: int | None = None, max_side: int | None = None) -> list[Face]:
        """All faces in an RGB image, largest first."""
        return [Face(box, self.landmarks(image, box), score)
                for box, score in self.boxes(image, upsample, max_side)]


class FaceEmbedder:
    """dlib's 128-d face recognition embedding (distance < 0.6: same person)."""

    def __init__(self) -> None:
        self._model = _dlib_model("embedder")

    def embed(self, image: np.ndarray, face: Face) -> np.ndarray:
        shape = dlib.full_object_detection(_rect(face.box), [dlib.point(int(x), int(y)) for x, y in face.landmarks])
        return np.array(self._model.compute_face_descriptor(np.ascontiguousarray(image), shape), np.float32)


def choose_face(faces: list[Face], face_index: int, path: Path | None = None) -> Face:
    """Pick face `face_index` (0 = largest), logging a note when there are several."""
    if not faces:
        raise ReenactError("no face found; use a photo with a clearly visible, roughly frontal face", path)
    if face_index >= len(faces) or face_index < 0:
        raise ReenactError(f"--face-index {face_index} asked for, but only {len(faces)} face(s) found", path)
    if len(faces) > 1:
        log.warning("%s: %d faces found; using face %d (%s); choose another with --face-index N (0 = largest)",
                    path or "image", len(faces), face_index, "the largest" if face_index == 0 else "by size")
    return faces[face_index]


# ---------------------------------------------------------------- tracking

@dataclass
class TrackConfig:
    """How a face is followed through a video."""

    keyframe_interval: int = 10  # full detection every N frames
    detect_max_side: int = 360  # detection runs on frames downscaled to this long side
    smooth_seconds: float = 0.2  # Savitzky-Golay window for landmarks (keeps blinks)
    min_iou: float = 0.3  # a keyframe detection must overlap the tracked face this much


@dataclass
class Track:
    """A face followed through a video, in full-frame coordinates."""

    landmarks: np.ndarray  # (N, 68, 2) float32, bridged and smoothed
    raw: np.ndarray  # (N, 68, 2) float32, as predicted (bridged where missing)
    found: np.ndarray  # (N,) bool: a face was found in this frame
    frame_size: tuple[int, int]  # (width, height)
    faces_in_first: int = 1  # how many faces the first detection saw

    @property
    def n_frames(self) -> int:
        return len(self.found)

    @property
    def n_missing(self) -> int:
        return int((~self.found).sum())


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    x0, y0 = max(a[0], b[0]), max(a[1], b[1])
    x1, y1 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x1 - x0) * max(0.0, y1 - y0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _landmark_box(lm: np.ndarray) -> np.ndarray:
    return np.array([lm[:, 0].min(), lm[:, 1].min(), lm[:, 0].max(), lm[:, 1].max()], np.float32)


@dataclass
class _BoxRelation:
    """How the detector's box sits relative to the landmarks' bounding box."""

    offset: np.ndarray = field(default_factory=lambda: np.zeros(4, np.float32))

    def learn(self, det_box: np.ndarray, lm: np.ndarray) -> None:
        lb = _landmark_box(lm)
        size = max(lb[2] - lb[0], lb[3] - lb[1], 1.0)
        self.offset = (det_box - lb) / size

    def box_for(self, lm: np.ndarray) -> np.ndarray:
        lb = _landmark_box(lm)
        size = max(lb[2] - lb[0], lb[3] - lb[1], 1.0)
        return lb + self.offset * size


def track(
    frames: Iterable[np.ndarray],
    detector: FaceDetector,
    config: TrackConfig | None = None,
    face_index: int = 0,
    fps: float = 25.0,
    path: Path | None = None,
    on_frame: Callable[[int], None] | None = None,
) -> Track:
    """Follow one face (0 = largest in the first frame where any is found)."""
    config = config or TrackConfig()
    raw: list[np.ndarray | None] = []
    relation = _BoxRelation()
    previous: np.ndarray | None = None  # landmarks of the last frame with a face
    frame_size = (0, 0)
    faces_in_first = 0
    last_known: np.ndarray | None = None  # landmarks of the last frame with a face, kept while lost
    lost_for = 0
    for i, image in enumerate(frames):
        frame_size = (image.shape[1], image.shape[0])
        lm = None
        if previous is not None and i % config.keyframe_interval != 0:
            lm = detector.landmarks(image, relation.box_for(previous))  # track between keyframes
        else:
            boxes = detector.boxes(image, upsample=1 if max(frame_size) <= 400 else 0,
                                   max_side=config.detect_max_side)
            box = None
            if last_known is None and boxes:  # first acquisition: the face asked for
                faces_in_first = len(boxes)
                if face_index >= len(boxes):
                    raise ReenactError(f"--driver-face-index {face_index} asked for, but only {len(boxes)} "
                                       f"face(s) found in the video", path)
                box = boxes[face_index][0]
            elif boxes:  # keyframe or re-acquisition: the detection that overlaps our face
                tracked = relation.box_for(last_known)
                best = max(boxes, key=lambda b: _iou(b[0], tracked))
                if _iou(best[0], tracked) >= config.min_iou or previous is None and _iou(best[0], tracked) > 0:
                    box = best[0]
                elif previous is None and lost_for > fps:  # gone for a while: take the largest again
                    box = boxes[0][0]
            if box is not None:
                lm = detector.landmarks(image, box)
                relation.learn(box, lm)
        if lm is not None and not _plausible(lm, frame_size):
            lm = None
        raw.append(lm)
        previous = lm  # None: lost, detect again on the next frame
        lost_for = 0 if lm is not None else lost_for + 1
        if lm is not None:
            last_known = lm
        if on_frame is not None:
            on_frame(i)
    if not raw:
        raise ReenactError("video has no frames", path)
    found = np.array([lm is not None for lm in raw])
    if not found.any():
        raise ReenactError("no face found in any frame of the driver video", path)
    bridged = _bridge(raw)
    if faces_in_first > 1:
        log.warning("%s: %d faces in the video; following face %d (0 = largest); choose with --driver-face-index N",
                    path or "driver", faces_in_first, face_index)
    return Track(landmarks=smooth_landmarks(bridged, fps, config.smooth_seconds), raw=bridged,
                 found=found, frame_size=frame_size, faces_in_first=max(faces_in_first, 1))


def _plausible(lm: np.ndarray, frame_size: tuple[int, int]) -> bool:
    """Reject degenerate landmark sets (collapsed, or mostly outside the frame)."""
    lb = _landmark_box(lm)
    w, h = frame_size
    if lb[2] - lb[0] < 8 or lb[3] - lb[1] < 8:
        return False
    inside = (lm[:, 0] >= -0.1 * w) & (lm[:, 0] <= 1.1 * w) & (lm[:, 1] >= -0.1 * h) & (lm[:, 1] <= 1.1 * h)
    return inside.mean() > 0.8


def _bridge(raw: list[np.ndarray | None]) -> np.ndarray:
    """Fill frames with no face: interpolate between found neighbours, hold at the ends."""
    n = len(raw)
    known = np.array([i for i, lm in enumerate(raw) if lm is not None])
    values = np.stack([raw[i] for i in known]).reshape(len(known), -1)
    out = np.empty((n, values.shape[1]), np.float32)
    for j in range(values.shape[1]):
        out[:, j] = np.interp(np.arange(n), known, values[:, j])
    return out.reshape(n, 68, 2)


def smooth_landmarks(landmarks: np.ndarray, fps: float, seconds: float) -> np.ndarray:
    """Savitzky-Golay smoothing over time (quadratic fit keeps short blinks and lip peaks)."""
    n = len(landmarks)
    window = int(round(seconds * fps)) | 1
    if window < 5 or n < 5:
        return landmarks.astype(np.float32)
    window = min(window, n if n % 2 else n - 1)
    return savgol_filter(landmarks, window, polyorder=2, axis=0, mode="interp").astype(np.float32)


def smooth_boxes(centres: np.ndarray, fps: float, seconds: float = 1.0) -> np.ndarray:
    """Zero-phase Gaussian smoothing of crop boxes (N, k) over time: a steady crop."""
    from scipy.ndimage import gaussian_filter1d

    if len(centres) < 2:
        return centres.astype(np.float32)
    return gaussian_filter1d(centres.astype(np.float64), sigma=max(seconds * fps, 1e-3), axis=0,
                             mode="nearest").astype(np.float32)
