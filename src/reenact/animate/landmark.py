"""The landmark backend: relative landmark motion, a 3-D mean face for head turns, and a thin-plate-spline warp.

No learned weights. For each driver frame:

1. Motion. A 3-D mean face fitted to the driver's 68 landmarks gives the
   head's out-of-plane turn (yaw, pitch) since the reference frame; the
   reference, turned by it, predicts every point with parallax. A similarity
   (stable points: eye corners, nose) fitted to that prediction carries the
   head's translation, roll and scale; the rest is the face's own motion in
   the reference frame. It is carried into the source by the similarity that
   maps the driver's reference face onto the source face, added to the
   source's landmarks with a gain per region (full gains carry the driver's
   face shape and cost identity); eyelids follow the driver's eye aspect
   ratio against its own open-eye baseline; the mouth opening follows the
   driver's inner-lip gap, and its lower lip's and chin's drop where the gap
   hides (a moustache); lips and lids never cross. The source's points are
   then turned in 3-D about its own head centre (depth from the mean face
   fitted to the source) and moved by the head similarity.
2. Warp. Extra control points make the rest of the head follow: forehead
   points, crease points between lids and brows, a ring around the head (not
   turned; its lower part moving less, the body stays), and fixed anchors on
   the crop border. A thin-plate spline from target points to source points is
   evaluated on a coarse grid, its displacement faded to exactly zero at the
   crop border, upsampled, and the source crop is resampled with `cv2.remap`
   (backward mapping: no holes). Inside the eyes the maps move the irises as
   the driver's move (gaze).
3. Paint. A shut eye gets a closed lid painted from the source's own lid and
   under-eye skin, with a lash line. Where the target inner lips open wider
   than the source's, the mouth is filled: the source's own interior (its
   teeth, at their size) where it shows one, else a drawn one (shaded cavity,
   teeth coloured like the source's eye whites, tongue), or the driver's
   interior recoloured with `driver_mouth=True`.

All complex arithmetic below treats a point (x, y) as x + iy, so a similarity
is z -> a z + b with a complex `a` (scale and rotation). docs/landmark-backend.md
has the measurements behind each choice.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np
from threadpoolctl import ThreadpoolController

from reenact.animate.base import DriverFrame, SourceFace
from reenact.animate.regions import normalize_region, restrict_landmarks
from reenact.errors import ReenactError
from reenact.face.align import CropConfig

log = logging.getLogger(__name__)

STABLE = [27, 28, 29, 30, 31, 33, 35, 36, 39, 42, 45]  # nose bridge and base, eye corners
LID_PAIRS = [(37, 41), (38, 40), (43, 47), (44, 46)]  # upper lid, lower lid
LIP_PAIRS = [(61, 67), (62, 66), (63, 65)]  # upper inner lip, lower inner lip
INNER_LIPS = list(range(60, 68))
OUTER_LIPS = list(range(48, 60))
# A mean face in 3-D, in units of the eye-centre distance, centred between the eyes; x right, y down, z into
# the image (right-handed). x and y: the mean of near-frontal dlib shapes from the shared drivers and portraits,
# aligned and mirrored; z: typical soft-tissue depths (mm over a 62 mm eye distance) in front of the inner eye
# corners, from anthropometric tables (nose tip 32 mm, lips 15-20, chin 10, jaw angle -36, ear level -55).
MEAN_FACE = np.array([
    (-1.139, 0.060, 0.887), (-1.119, 0.369, 0.806), (-1.077, 0.670, 0.710), (-1.020, 0.967, 0.581),
    (-0.915, 1.245, 0.419), (-0.752, 1.490, 0.242), (-0.538, 1.697, 0.081), (-0.289, 1.861, -0.081),
    (0.000, 1.912, -0.161), (0.289, 1.861, -0.081), (0.538, 1.697, 0.081), (0.752, 1.490, 0.242),
    (0.915, 1.245, 0.419), (1.020, 0.967, 0.581), (1.077, 0.670, 0.710), (1.119, 0.369, 0.806),
    (1.139, 0.060, 0.887), (-0.932, -0.192, 0.194), (-0.802, -0.337, 0.032), (-0.604, -0.398, -0.081),
    (-0.393, -0.389, -0.145), (-0.197, -0.314, -0.177), (0.197, -0.314, -0.177), (0.393, -0.389, -0.145),
    (0.604, -0.398, -0.081), (0.802, -0.337, 0.032), (0.932, -0.192, 0.194), (0.000, -0.057, -0.161),
    (0.000, 0.131, -0.258), (0.000, 0.319, -0.371), (0.000, 0.513, -0.516), (-0.228, 0.678, -0.194),
    (-0.117, 0.714, -0.274), (0.000, 0.744, -0.339), (0.117, 0.714, -0.274), (0.228, 0.678, -0.194),
    (-0.692, 0.010, 0.194), (-0.571, -0.060, -0.016), (-0.428, -0.064, -0.048), (-0.301, 0.016, 0.000),
    (-0.433, 0.047, -0.032), (-0.576, 0.051, 0.000), (0.301, 0.016, 0.000), (0.428, -0.064, -0.048),
    (0.571, -0.060, -0.016), (0.692, 0.010, 0.194), (0.576, 0.051, 0.000), (0.433, 0.047, -0.032),
    (-0.385, 1.120, -0.097), (-0.246, 1.021, -0.226), (-0.103, 0.968, -0.306), (0.000, 0.997, -0.323),
    (0.103, 0.968, -0.306), (0.246, 1.021, -0.226), (0.385, 1.120, -0.097), (0.249, 1.239, -0.210),
    (0.111, 1.298, -0.274), (0.000, 1.309, -0.290), (-0.111, 1.298, -0.274), (-0.249, 1.239, -0.210),
    (-0.311, 1.118, -0.129), (-0.104, 1.087, -0.258), (0.000, 1.096, -0.290), (0.104, 1.087, -0.258),
    (0.311, 1.118, -0.129), (0.105, 1.123, -0.242), (0.000, 1.136, -0.274), (-0.105, 1.123, -0.242),
], np.float64)
HEAD_CENTRE = np.array([0.0, 0.4, 1.45])  # the head turns about a point behind the eyes (neck pivot)
POSE_POINTS = list(range(0, 48))  # jaw, brows, nose, eyes: fitted to find the head's 3-D rotation
LOWER_FACE = np.zeros(68)  # how much each point follows a change of the mouth opening
LOWER_FACE[[55, 56, 57, 58, 59, 65, 66, 67]] = 1.0
LOWER_FACE[[6, 7, 8, 9, 10]] = 0.6
LOWER_FACE[[5, 11]] = 0.3
LOWER_FACE[[48, 54, 60, 64]] = 0.5


@dataclass
class LandmarkConfig:
    """Options of the landmark backend (all have working defaults)."""

    grid: int = 48  # the spline is evaluated on grid x grid points, then upsampled
    expression: float = 1.0  # gain on local motion (mouth, brows, jaw)
    head: float = 1.0  # gain on head motion (0 keeps the head still)
    max_head_shift: float = 0.1  # head translation softly limited to this fraction of the crop
    max_head_scale: float = 1.25  # ... scale change to this factor either way
    max_head_roll: float = 30.0  # ... and rotation to this many degrees
    fade: float = 0.1  # border band, as a fraction of the crop, where the warp fades to identity
    smoothing: float = 1e-5  # thin-plate-spline regularisation (in crop-normalised units)
    mouth_fill: bool = True  # fill an opening mouth instead of stretching the lips
    teeth: float = 0.9  # brightness of drawn teeth, times the source's eye whites
    driver_mouth: bool = False  # fill it from the driver's mouth interior (needs driver images), not drawn / the source's
    mouth_darkness: float = 0.5  # the driver's interior's mean brightness at most this times the lips'
    eye_lids: bool = True  # paint a closed lid over a shut eye
    gaze: float = 0.8  # gain on the driver's iris movement within the eye (0: off; needs driver images)
    lid_floor: float = 0.45  # the warp closes the lids to this fraction of their gap at most; paint does the rest
    lid_stretch: bool = False  # also stretch the upper lid's skin over it in the warp (the earlier method)
    lid_margin: float = 0.2  # the lid skin is taken from this far (times the open lid gap) above the lash line
    lid_skin: float = 1.0  # how tall a band of upper-lid skin (relative to the covered height) is stretched over it
    eye_ratio: bool = True  # eyelids follow the driver's lid gap by ratio (blinks always close)
    eye_closed: float = 0.5  # the driver's eye aspect ratio, over its open-eye baseline, read as a shut eye
    lid_shut: float = 0.45  # a closed lid is painted over eyes less open than this (0 shut, 1 open) ...
    lid_full: float = 0.15  # ... fully at this openness and below (a blink reads 0.1-0.2: no eye shows through)
    lash: float = 1.9  # half-width (px at 256) of the dark lash line on a painted closed lid (dlib reads it)
    max_eye_ratio: float = 1.1  # eyes open at most this much wider than the source's
    jaw: float = 0.3  # gain on the jaw outline's local motion (mostly 2-D shadows of head turns)
    brows: float = 0.5  # gain on the brows' local motion
    nose: float = 0.5  # gain on the nose's local motion (turns of the head)
    eyes: float = 0.25  # gain on the eyes' local motion (lid gaps are set separately)
    mouth: float = 0.5  # gain on the lips' local motion (the opening itself is set separately)
    opening: float = 0.8  # gain on the mouth opening (1: the driver's gap scaled by face size opened visibly wider)
    jaw_opening: float = 1.0  # how far the lower lip's and chin's drop open the mouth (0: the inner-lip gap only)
    turn: float = 0.8  # gain on the head's out-of-plane turn (yaw, pitch), applied in 3-D with the mean face
    max_turn: float = 35.0  # ... softly limited to this many degrees
    turn_steady: float = 0.5  # weight of the new frame in a one-pole filter on the turn (1: off)
    steady: float = 0.4  # weight of the new frame in a one-pole filter on head and non-lip motion (1: off)


# ------------------------------------------------------------------ geometry helpers

def _z(points: np.ndarray) -> np.ndarray:
    return points[..., 0].astype(np.float64) + 1j * points[..., 1].astype(np.float64)


def _xy(z: np.ndarray) -> np.ndarray:
    return np.stack([z.real, z.imag], -1).astype(np.float32)


def fit_similarity(p: np.ndarray, q: np.ndarray) -> tuple[complex, complex]:
    """Least-squares similarity q ~ a p + b on complex points."""
    mp, mq = p.mean(), q.mean()
    dp = p - mp
    a = np.vdot(dp, q - mq) / max(np.vdot(dp, dp).real, 1e-12)
    return complex(a), complex(mq - a * mp)


def _tps_kernel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Thin-plate kernel r^2 log r^2 between point sets a (n, 2) and b (m, 2): (n, m) float32."""
    a, b = a.astype(np.float32), b.astype(np.float32)
    r2 = (a[:, :1] - b[:, 0]) ** 2
    r2 += (a[:, 1:] - b[:, 1]) ** 2
    np.maximum(r2, 1e-20, out=r2)
    k = np.log(r2)
    k *= r2
    return k


def extra_points(lm: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Forehead points and a ring around the head, (K, 2), with the brow each follows, how much, and how
    much each moves with the head.

    Forehead points also take part of their brow's own motion, so a raised or
    lowered brow moves the forehead smoothly instead of folding the skin
    between them. The ring's lower part, over neck and shoulders, moves less
    with the head than its upper part: the body stays while the head turns.
    """
    z = _z(lm)
    left, right = z[36:42].mean(), z[42:48].mean()
    mid = (left + right) / 2
    iod = abs(right - left)
    down = (z[8] - mid) / max(abs(z[8] - mid), 1e-6)  # from between the eyes to the chin
    up = -down
    brows = z[[17, 19, 21, 22, 24, 26]]
    forehead = brows + up * 0.55 * iod
    top = np.array([mid + up * 1.6 * iod + down * 1j * s * iod for s in (-0.9, 0.0, 0.9)])
    centre = mid + down * 0.55 * iod
    ring = centre + (np.exp(1j * np.linspace(0, 2 * np.pi, 16, endpoint=False)) * 2.1 * iod)
    # Halfway between upper lids and brows: pins the skin there to the brows, so a closing lid does not drag them.
    crease = z[[37, 38, 43, 44]] + 0.5 * (z[[19, 20, 23, 24]] - z[[37, 38, 43, 44]])
    pts = np.concatenate([forehead, crease, top, ring])
    follow = np.r_[[17, 19, 21, 22, 24, 26], [19, 20, 23, 24], np.zeros(len(top) + len(ring), int)]
    weight = np.r_[np.full(len(forehead), 0.6), np.ones(len(crease)), np.zeros(len(top) + len(ring))]
    lowness = ((ring - centre) / down).real / (2.1 * iod)  # -1 above the head .. 1 under the chin
    head = np.r_[np.ones(len(forehead) + len(crease) + len(top)), np.clip(1.0 - 0.8 * lowness, 0.2, 1.0)]
    margin = 0.12 * size  # keep clear of the border anchors
    inside = (pts.real > margin) & (pts.real < size - margin) & (pts.imag > margin) & (pts.imag < size - margin)
    return _xy(pts[inside]), follow[inside], weight[inside], head[inside]


def border_points(size: int, per_side: int = 8) -> np.ndarray:
    t = np.linspace(0, size - 1, per_side + 1)[:-1]
    e = float(size - 1)
    return np.concatenate([np.stack([t, np.zeros_like(t)], 1), np.stack([np.full_like(t, e), t], 1),
                           np.stack([e - t, np.full_like(t, e)], 1), np.stack([np.zeros_like(t), e - t], 1)]).astype(np.float32)


def _lerp_lid(z: np.ndarray, pairs: list[tuple[int, int]], gaps: np.ndarray, down: complex, upper: float = 0.5) -> None:
    """Set each (upper, lower) pair's gap along `down` to `gaps`; the upper point takes `upper` of the change."""
    for (u, l), g in zip(pairs, gaps):
        change = g - ((z[l] - z[u]) / down).real
        z[u] -= down * change * upper
        z[l] += down * change * (1 - upper)


def _gaps(z: np.ndarray, pairs: list[tuple[int, int]], down: complex) -> np.ndarray:
    return np.array([((z[l] - z[u]) / down).real for u, l in pairs])


# ------------------------------------------------------------------ the backend

class LandmarkBackend:
    """Relative landmark motion + thin-plate-spline warp; see the module docstring."""

    name = "landmark"
    sizes = (256, 512)
    crop = CropConfig()
    AUTO_512_SIDE = 384  # "auto": a portrait crop at least this wide (px) is animated at 512

    @classmethod
    def auto_size(cls, face_side: float, options: dict) -> int:
        """512 when 256 would blow a crop of the portrait of `face_side` >= 384 px up 1.5x or more (the face
        looks soft), else 256."""
        return 512 if face_side >= cls.AUTO_512_SIDE else 256

    def __init__(self, size: int = 256, **options) -> None:
        self.region = normalize_region(options.pop("motion", "all"))  # --motion: which part of the motion
        unknown = set(options) - set(LandmarkConfig.__dataclass_fields__)
        if unknown:
            raise ReenactError(f"unknown landmark backend option(s): {', '.join(sorted(unknown))}")
        self.size = int(size)
        self.config = LandmarkConfig(**options)
        self.needs_driver_images = (self.config.mouth_fill and self.config.driver_mouth) or self.config.gaze > 0
        g, s = self.config.grid, self.size
        # Grid points at the cell centres cv2.resize assumes, so upsampling is exact at them.
        axis = ((np.arange(g) + 0.5) * s / g - 0.5).astype(np.float32)
        gx, gy = np.meshgrid(axis, axis)
        self._grid = (np.stack([gx.ravel(), gy.ravel()], 1) / s).astype(np.float32)  # (G, 2) normalised
        edge = np.minimum(axis + 0.5, s - 0.5 - axis)  # distance of each grid line to the crop border
        d = np.minimum(edge[None, :], edge[:, None])
        band = max(self.config.fade * s, 1.0)
        t = np.clip((d - 0.02 * s - s / g) / band, 0, 1)  # zero a grid cell inside the 2% band: exact after upsampling
        self._fade = (t * t * (3 - 2 * t)).astype(np.float32)[..., None]  # (g, g, 1) smoothstep
        base = np.arange(s, dtype=np.float32)
        self._base_x, self._base_y = np.meshgrid(base, base)
        self._border = border_points(s)
        self._kernel_border = _tps_kernel(self._grid, self._border / s)
        self._threads = ThreadpoolController()
        self._prepared = False

    def paste_mask(self) -> np.ndarray:
        """(S, S) float32 mask for pasting this backend's crops back: 1 wherever the warp may differ from the source.

        The warp is exactly the identity in the outer 2% of the crop, so a mask
        that is 1 inside that band and fades to 0 at the edge pastes back with
        no seam, whatever the head does inside the crop (colour matching is not
        needed either: the output's pixels are the source's, resampled).
        """
        s = self.size
        edge = np.minimum(np.arange(s) + 0.5, s - 0.5 - np.arange(s)) / (0.02 * s)
        ramp = np.clip(edge, 0, 1).astype(np.float32)
        ramp = ramp * ramp * (3 - 2 * ramp)
        return np.minimum(ramp[None, :], ramp[:, None])

    # -------------------------------------------------------------- setup

    def prepare(self, source: SourceFace, reference: DriverFrame) -> None:
        s = self.size
        if source.image.shape[:2] != (s, s):
            raise ReenactError(f"source crop is {source.image.shape[1]}x{source.image.shape[0]}, backend size is {s}")
        self.source = source.image
        self._src = _z(source.landmarks)
        self._ref = _z(reference.landmarks)
        self._ref_landmarks = reference.landmarks
        # Driver reference -> source face: carries the driver's residual motion into the source frame.
        self._alpha, self._beta = fit_similarity(self._ref[STABLE], self._src[STABLE])
        self._down_src = self._down(self._src)
        self._gain = np.ones(68)
        self._gain[0:17] = self.config.jaw
        self._gain[17:27] = self.config.brows
        self._gain[27:36] = self.config.nose
        self._gain[36:48] = self.config.eyes
        self._gain[48:68] = self.config.mouth
        self._down_ref = self._down(self._ref)
        self._src_lid = _gaps(self._src, LID_PAIRS, self._down_src)
        self._ref_lid = _gaps(self._ref, LID_PAIRS, self._down_ref)
        self._src_lip = max(_gaps(self._src, LIP_PAIRS, self._down_src).mean(), 0.0)  # dlib's closed lips may cross
        self._ref_lip = _gaps(self._ref, LIP_PAIRS, self._down_ref).mean()
        self._iod = abs(self._src[42:48].mean() - self._src[36:42].mean())
        extra, self._follow, self._follow_weight, self._head_weight = extra_points(source.landmarks, s)
        self._extra = _z(extra)
        self._controls = np.concatenate([source.landmarks, extra, self._border]).astype(np.float32) / s  # spline values
        self._lip_stats = _ring_stats(source.image, source.landmarks)
        # How bright the source's own open mouth is (teeth?): 0 unless it is clearly open.
        self._src_mouth = _mouth_brightness(source.image, source.landmarks) if self._src_lip > 0.1 * self._iod else 0.0
        self._drv_stats = _ring_stats(reference.image, reference.landmarks) if reference.image is not None else None
        # 3-D: the mean face fitted to source and reference, each point's depth, the head centre to turn about.
        self._ref3, self._ref_centre, self._ref_rot = _lift(reference.landmarks)
        self._ref_ear = _ear(self._ref)
        self._ref_iod = abs(self._ref[42:48].mean() - self._ref[36:42].mean())
        src3, self._src_centre, _ = _lift(source.landmarks)
        self._src_depth = src3[:, 2]
        self._extra_turns = self._follow_weight > 0  # forehead and crease points turn with the face; the ring does not
        scale = float(np.linalg.norm(src3[42:48, :2].mean(0) - src3[36:42, :2].mean(0)))
        self._extra_depth = self._src_depth[self._follow] + 0.1 * scale
        self._ear_seen = [float(self._ref_ear.mean())] * 10
        self._lip_history: list[tuple[float, float, float]] = []  # (gap, lip drop / 1.4, unexplained drop)
        self._previous = None
        self._previous_forward = None
        self._openness = 1.0
        self._teeth = _teeth_colour(source.image, source.landmarks, self._lip_stats[0])
        # The source's own mouth interior (teeth), where it shows one: reused, at its size, as the mouth opens.
        self._src_interior = None
        if self._src_mouth > 0:
            interior = np.zeros((s, s), np.float32)
            cv2.fillPoly(interior, [np.round(source.landmarks[60:68] * 4).astype(np.int32)], 1.0, cv2.LINE_AA, shift=2)
            interior = cv2.erode(interior, np.ones((3, 3), np.uint8))
            self._src_interior = cv2.GaussianBlur(interior, (0, 0), max(1.0 * s / 256, 0.5))
        self._ref_iris = _iris_offset(reference.image, reference.landmarks) if reference.image is not None else None
        self._gaze = np.zeros(2)
        self._lid_colours = [_lid_colours(source.image, source.landmarks, eye) for eye in (36, 42)]
        self._prepared = True

    @staticmethod
    def _down(z: np.ndarray) -> complex:
        d = (z[42:48].mean() - z[36:42].mean()) * 1j  # eye line turned by +90 degrees: down in image coordinates
        return complex(d / max(abs(d), 1e-6))

    # -------------------------------------------------------------- motion

    def targets(self, driver: np.ndarray) -> tuple[np.ndarray, np.ndarray, complex]:
        """Target positions (source crop pixels) of the 68 landmarks and the extra points, and the head scale/rotation."""
        cfg = self.config
        z = _z(driver)
        a, b = fit_similarity(self._ref[STABLE], z[STABLE])  # reference -> this frame (a first guess)
        plausible = bool(np.isfinite(z).all() and np.isfinite(a) and 0.5 < abs(a) < 2.0)
        if not plausible:
            log.debug("implausible driver landmarks (scale %.3g): no motion for this frame", abs(a))
            z, a, b = self._ref.copy(), 1.0 + 0j, 0j
        # Out-of-plane rotation: the mean face fitted to this frame and to the reference gives the turn
        # (yaw and pitch; roll stays with the similarity). The reference turned by it predicts where every
        # point goes with parallax; what the prediction misses is the face's own motion.
        turn = self._turn_between(driver if plausible else _xy(self._ref))
        turned_ref = _rotate(self._ref3, self._ref_centre, turn)
        a, b = fit_similarity(turned_ref[STABLE], z[STABLE])
        if not (np.isfinite(a) and 0.5 < abs(a) < 2.0):
            turn, turned_ref = np.eye(3), self._ref
            a, b = fit_similarity(self._ref[STABLE], z[STABLE])
        residual = (z - b) / a - turned_ref  # local motion in the reference frame, turn removed
        normalised = turned_ref + residual  # this frame in the reference's place, size and roll (unfiltered: blinks)
        if cfg.steady < 1.0:  # one-pole smoothing of head motion and of everything but the lips
            if self._previous is not None:
                pa, pb, pr = self._previous
                k = cfg.steady
                a, b = k * a + (1 - k) * pa, k * b + (1 - k) * pb
                residual[:48] = k * residual[:48] + (1 - k) * pr[:48]
            self._previous = (a, b, residual.copy())
        local = self._src + residual * self._alpha * (cfg.expression * self._gain)
        down = self._down_src
        if cfg.eye_ratio:
            gaps = self._src_lid * self._eye_openness(normalised, turned_ref)
        else:
            gaps = _gaps(local, LID_PAIRS, down)
        # Blinks are the upper lid's. The lids never meet in the warp: coincident control points that come
        # from far apart make the spline swing (a fold under the eye); the lid override paints the rest.
        _lerp_lid(local, LID_PAIRS, np.maximum(gaps, cfg.lid_floor * self._src_lid), down, upper=0.8)
        # Mouth opening: the driver's inner-lip gap (scaled into the source) on top of whatever the source
        # shows beyond the driver's reference, so a reference caught mid-word neither clips nor inverts the motion.
        # The lower lip's and the chin's drop open it too, where a moustache or a misread inner lip hides the gap.
        opening = self._driver_opening(normalised, turned_ref)
        opening = self._ref_lip + cfg.opening * (opening - self._ref_lip)  # the gain acts on the change only
        gap = opening * abs(self._alpha) * cfg.expression
        gap = max(gap, 0.0) + max(self._src_lip - self._ref_lip * abs(self._alpha), 0.0)
        shift = (gap - _gaps(local, LIP_PAIRS, down).mean()) * down
        local += shift * LOWER_FACE  # move the lower lip and, less, the chin
        lips = _gaps(local, LIP_PAIRS, down)
        if (lips < 0).any():
            _lerp_lid(local, LIP_PAIRS, np.maximum(lips, 0.0), down)
        extra = self._extra + (local - self._src)[self._follow] * self._follow_weight
        # The turn, about the source's own head centre, with the mean face's depth at each point.
        local = _rotate(np.c_[local.real, local.imag, self._src_depth], self._src_centre, turn)
        if self._extra_turns.any():
            e3 = np.c_[extra.real, extra.imag, self._extra_depth][self._extra_turns]
            extra[self._extra_turns] = _rotate(e3, self._src_centre, turn)
        # Head motion, conjugated into the source frame: w -> a (w - beta) + alpha b + beta.
        if cfg.head != 1.0:
            a = complex(np.exp(cfg.head * np.log(a))) if a != 0 else 1.0
            b = b * cfg.head
        a = self._limit_rotation_scale(a)
        shift = self._alpha * b + self._beta - a * self._beta
        # A 2-D warp cannot carry a head far across the crop (it folds against the fixed border):
        # past `max_head_shift` the face centre's move is compressed smoothly (tanh) towards that limit.
        centre = self._src[STABLE].mean()
        moved = a * centre + shift - centre
        limit = cfg.max_head_shift * self.size
        if abs(moved) > 1e-9 and limit > 0:
            shift += moved * (limit * np.tanh(abs(moved) / limit) / abs(moved) - 1.0)
        extra += (a * extra + shift - extra) * self._head_weight
        return _xy(a * local + shift), _xy(extra), a

    def _turn_between(self, driver: np.ndarray) -> np.ndarray:
        """The head's out-of-plane turn from the reference to this frame (3x3, no roll), smoothed and limited."""
        cfg = self.config
        rot, _, _ = fit_pose(driver)
        forward = (rot @ self._ref_rot.T)[:, 2]  # where the reference's line of sight points now
        if cfg.turn_steady < 1.0 and self._previous_forward is not None:
            forward = cfg.turn_steady * forward + (1 - cfg.turn_steady) * self._previous_forward
        forward = forward / max(np.linalg.norm(forward), 1e-9)
        self._previous_forward = forward
        return swing(forward, cfg.turn, np.deg2rad(cfg.max_turn))

    def _eye_openness(self, normalised: np.ndarray, turned_ref: np.ndarray) -> np.ndarray:
        """How open the driver's eyes are (0 shut, 1 as open as usual), from the eye aspect ratio.

        Relative to the driver's own open-eye baseline: a high percentile of the
        ratios seen so far (seeded with the reference's), corrected for the turn's
        foreshortening. dlib never brings a shut eye's lids together: a ratio of
        `eye_closed` of the baseline reads as shut.
        """
        cfg = self.config
        ear = _ear(normalised)
        self._ear_seen.append(float(ear.mean()))
        if len(self._ear_seen) > 300:
            del self._ear_seen[:50]
        baseline = float(np.percentile(self._ear_seen, 75)) * (_ear(turned_ref).mean() / max(self._ref_ear.mean(), 1e-6))
        ratio = ear.mean() / max(baseline, 1e-6)
        openness = np.clip((ratio - cfg.eye_closed) / (1.0 - cfg.eye_closed), 0.0, cfg.max_eye_ratio)
        self._openness = float(openness)
        return np.full(4, openness)

    def _driver_opening(self, normalised: np.ndarray, turned_ref: np.ndarray) -> float:
        """The driver's inner-lip gap, plus the part of its lower lip's and chin's drop (since the reference)
        that the gap's own change does not explain, where the gap is hidden: a moustache or a beard hides the
        gap, not the jaw.

        Hidden means: over the last frames, the lower lip went up and down (by 0.02 eye distances or more)
        while the gap hardly followed (its spread under half the lip's, which moves 1.4 times as far as the
        gap on a bare mouth; on the shared drivers the ratio is 0.6-4). On a bare mouth the term is off: a
        nod or pushed-out lips move the lower lip without opening the mouth (tpsmm_driving held a closed
        mouth open). The drop is measured against its own floor in the last two seconds, and a margin keeps
        small movements from opening a closed mouth."""
        down = self._down_ref
        inner = _gaps(normalised, LIP_PAIRS, down).mean()
        drop = lambda w, i: ((w[i] - w[33]) / down).real  # noqa: E731  height of point i under the nose
        lip = drop(normalised, 57) - drop(turned_ref, 57)
        chin = drop(normalised, 8) - drop(turned_ref, 8)
        # Measured on real speech (vox_driving2): the outer lower lip drops about 1.4 times as far as the gap
        # opens, the chin 0.6 times, and the chin also moves on its own; both must agree.
        unexplained = min(lip / 1.4, chin / 0.6) - (inner - self._ref_lip)
        history = self._lip_history
        history.append((inner, lip / 1.4, unexplained))
        if len(history) > 150:
            del history[0]
        if self.config.jaw_opening <= 0 or len(history) < 10:
            return inner
        h = np.asarray(history)
        lip_spread = h[:, 1].std()
        if lip_spread < 0.02 * self._ref_iod:
            return inner
        hidden = float(np.clip((0.5 - h[:, 0].std() / lip_spread) / 0.25, 0.0, 1.0))
        floor = max(float(np.percentile(h[-50:, 2], 10)), 0.0)
        return inner + self.config.jaw_opening * hidden * max(0.0, unexplained - floor - 0.06 * self._ref_iod)

    def _limit_rotation_scale(self, a: complex) -> complex:
        """Soft limits on the head's scale change and roll (tanh), as for its translation."""
        cfg = self.config
        log_scale, roll = np.log(abs(a)), np.angle(a)
        s_lim, r_lim = np.log(cfg.max_head_scale), np.deg2rad(cfg.max_head_roll)
        log_scale = s_lim * np.tanh(log_scale / s_lim) if s_lim > 0 else 0.0
        roll = r_lim * np.tanh(roll / r_lim) if r_lim > 0 else 0.0
        return complex(np.exp(log_scale + 1j * roll))

    # -------------------------------------------------------------- warp

    def warp_map(self, target: np.ndarray, target_extra: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Backward maps (map_x, map_y), each (S, S) float32: output pixel -> source pixel."""
        s = self.size
        src = self._controls
        moving = np.concatenate([target, target_extra]) / s
        tgt = np.concatenate([moving, self._border / s])
        n = len(tgt)
        k = _tps_kernel(tgt, tgt)
        k[np.diag_indices(n)] += self.config.smoothing
        p = np.concatenate([np.ones((n, 1), np.float32), tgt], 1)
        system = np.zeros((n + 3, n + 3))
        system[:n, :n], system[:n, n:], system[n:, :n] = k, p, p.T
        rhs = np.zeros((n + 3, 2))
        rhs[:n] = src - tgt  # fit the displacement: exact identity where nothing moves
        try:
            coef = np.linalg.solve(system, rhs)
        except np.linalg.LinAlgError:  # coincident control points
            coef = np.linalg.lstsq(system, rhs, rcond=None)[0]
        w, affine = coef[:n].astype(np.float32), coef[n:].astype(np.float32)
        m = len(moving)
        kg = _tps_kernel(self._grid, moving)
        disp = kg @ w[:m] + self._kernel_border @ w[m:] + affine[0] + self._grid @ affine[1:]
        g = self.config.grid
        disp = disp.reshape(g, g, 2) * s * self._fade
        disp = cv2.resize(disp, (s, s), interpolation=cv2.INTER_LINEAR)
        return self._base_x + disp[..., 0], self._base_y + disp[..., 1]

    # -------------------------------------------------------------- frames

    def animate(self, frames: Sequence[DriverFrame]) -> np.ndarray:
        if not self._prepared:
            raise RuntimeError("call prepare() before animate()")
        out = np.empty((len(frames), self.size, self.size, 3), np.uint8)
        # The spline's small solves and products are fastest on one thread; a threaded BLAS only spins
        # against the decoder and encoder on a 2-core machine (10x slower under load, measured).
        with self._threads.limit(limits=1, user_api="blas"):
            for i, frame in enumerate(frames):
                out[i] = self.animate_one(frame)
        return out

    def animate_one(self, frame: DriverFrame) -> np.ndarray:
        target, extra, a = self.targets(restrict_landmarks(frame.landmarks, self._ref_landmarks, self.region))
        map_x, map_y = self.warp_map(target, extra)
        if self.config.gaze > 0 and frame.image is not None:
            self._move_irises(map_x, map_y, target, frame)
        if self.config.eye_lids and self.config.lid_stretch:
            self._close_eyes(map_x, map_y, target, abs(a))
        image = cv2.remap(self.source, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        if self.config.eye_lids:
            self._paint_lids(image, target, abs(a))
        if self.config.mouth_fill:
            self._fill_mouth(image, target, frame, abs(a))
        return image

    def _move_irises(self, map_x: np.ndarray, map_y: np.ndarray, target: np.ndarray, frame: DriverFrame) -> None:
        """Gaze: move the source's irises inside the eye openings as the driver's move within theirs.

        The driver's iris is found as the darkness-weighted centre of each eye
        opening, relative to the eye's corners, in eye widths; its change from the
        reference (both eyes averaged: gaze is shared) shifts the backward maps
        inside the target eye openings, most in the middle, not at the corners.
        """
        cfg = self.config
        if self._ref_iris is None:
            return
        now = _iris_offset(frame.image, frame.landmarks)
        if now is None or self._openness < 0.5:
            moved = np.zeros(2)
        else:
            moved = np.clip((now - self._ref_iris) * cfg.gaze, -0.15, 0.15)
        k = cfg.steady
        self._gaze = k * moved + (1 - k) * self._gaze
        if np.abs(self._gaze).max() < 0.005:
            return
        s = self.size
        for eye in (slice(36, 42), slice(42, 48)):
            pts = target[eye]
            width = float(np.linalg.norm(pts[3] - pts[0]))
            x0, y0 = np.floor(pts.min(0)).astype(int) - 1
            x1, y1 = np.ceil(pts.max(0)).astype(int) + 2
            if x0 < 0 or y0 < 0 or x1 > s or y1 > s or width < 6:
                continue
            mask = np.zeros((y1 - y0, x1 - x0), np.float32)
            cv2.fillPoly(mask, [np.round((pts - (x0, y0)) * 4).astype(np.int32)], 1.0, cv2.LINE_AA, shift=2)
            mask = cv2.GaussianBlur(mask, (0, 0), 0.7 * s / 256)
            xs = np.arange(x0, x1, dtype=np.float32)
            across = np.clip((xs - pts[0, 0]) / max(pts[3, 0] - pts[0, 0], 1e-3), 0, 1)
            w = mask * np.sin(np.pi * across)[None, :]  # corners stay, the middle moves most
            box = np.s_[y0:y1, x0:x1]
            map_x[box] -= (self._gaze[0] * width * w).astype(np.float32)
            map_y[box] -= (self._gaze[1] * width * w).astype(np.float32)

    def _paint_lids(self, image: np.ndarray, target: np.ndarray, scale: float) -> None:
        """Paint a closed lid over a shut (or shutting) eye: skin from just above and below the eye, shaded,
        with a dark lash line where the lids meet.

        The colour comes from the warped source itself, column by column: the
        lid skin above the eye and the skin under the lower lid, blended from one
        to the other, so it matches the face's colour and lighting.
        """
        cfg = self.config
        amount = float(np.clip((cfg.lid_shut - self._openness) / (cfg.lid_shut - cfg.lid_full), 0.0, 1.0))
        if amount <= 0.0:
            return
        s = self.size
        px = s / 256
        for k, eye in enumerate((slice(36, 42), slice(42, 48))):
            pts = target[eye].astype(np.float64)
            open_gap = max(self._src_lid[2 * k:2 * k + 2].mean(), 1e-6) * scale
            width = float(np.linalg.norm(pts[3] - pts[0]))
            if width < 4:
                continue
            up = 1.1 * open_gap + 1.5 * px  # how far above the closed line the lid paint reaches (lashes included)
            dn = 0.35 * open_gap + 1.5 * px
            xa, xb = pts[[0, 3], 0].min() - 0.12 * width, pts[[0, 3], 0].max() + 0.12 * width
            x0, x1 = int(np.floor(xa)), int(np.ceil(xb)) + 1
            lower = _sorted(pts[[0, 5, 4, 3]])
            xs = np.arange(x0, x1, dtype=np.float64)
            line = np.interp(xs, *lower) - 0.1 * open_gap  # where the lids meet
            y0, y1 = int(np.floor(line.min() - up)) - 3, int(np.ceil(line.max() + dn)) + 4
            if x0 < 1 or y0 < 1 or x1 > s - 1 or y1 > s - 1:
                continue
            centre, half = (xa + xb) / 2, (xb - xa) / 2
            profile = np.sqrt(np.clip(1.0 - ((xs - centre) / half) ** 2, 0.0, 1.0))
            top, bottom = line - up * profile, line + dn * profile
            region = image[y0:y1, x0:x1].astype(np.float32)
            above, below = self._lid_colours[k]
            ys = np.arange(y0, y1, dtype=np.float64)[:, None]
            t = np.clip((ys - top) / np.maximum(bottom - top, 1e-3), 0, 1)[..., None]
            fill = above * (1 - t) + below * t
            shade = 1.0 - 0.12 * np.clip(1 - np.abs(ys - line) / max(up, 1e-3), 0, 1)  # the lid rounds into the fold
            lash = 1.0 - 0.8 * np.exp(-(((ys - line) / (cfg.lash * px)) ** 2)) * np.clip(profile * 3, 0, 1)
            fill *= (shade * lash)[..., None].astype(np.float32)
            inside = np.clip((ys - top) / np.maximum(0.35 * (line - top), 1e-3), 0, 1) * (ys <= bottom)  # soft top
            mask = cv2.GaussianBlur(inside.astype(np.float32), (0, 0), 0.8 * px) * amount
            region += (fill - region) * mask[..., None]
            image[y0:y1, x0:x1] = np.clip(region + 0.5, 0, 255).astype(np.uint8)

    def _close_eyes(self, map_x: np.ndarray, map_y: np.ndarray, target: np.ndarray, scale: float) -> None:
        """Stretch the upper lid's skin down over a (nearly) shut eye, in the backward maps.

        The smooth warp squeezes the eye into a slit but cannot cut it off. Once
        the target lids are mostly together, each column from a little above the
        target upper lid down to the lower lid samples the source's upper-lid
        skin, ending on the source's lash line, so the lid closes over the eye.
        """
        s = self.size
        gaps = _gaps(_z(target), LID_PAIRS, self._down_src) / max(scale, 1e-6)
        src = _xy(self._src)
        for k, eye in enumerate((slice(36, 42), slice(42, 48))):
            open_gap = max(self._src_lid[2 * k:2 * k + 2].mean(), 1e-6)
            amount = float(np.clip((1.0 - gaps[2 * k:2 * k + 2].mean() / open_gap - 0.5) / 0.3, 0.0, 1.0))
            if amount <= 0.0:
                continue
            pts, spts = target[eye], src[eye]
            width = float(np.linalg.norm(pts[3] - pts[0]))
            reach = max(0.7 * open_gap * scale, 0.15 * width)  # how much skin above the lid comes down
            below = 0.6 * open_gap * scale  # rows under the closed lids where the squeezed eye could show
            x0, x1 = int(np.floor(pts[:, 0].min())), int(np.ceil(pts[:, 0].max())) + 1
            y0, y1 = int(np.floor(pts[:, 1].min() - reach)) - 1, int(np.ceil(pts[:, 1].max() + below)) + 2
            if x0 < 0 or y0 < 0 or x1 > s or y1 > s or x1 - x0 < 4:
                continue
            xs = np.arange(x0, x1, dtype=np.float32)
            yu = np.interp(xs, *_sorted(pts[[0, 1, 2, 3]]))
            yl = np.maximum(np.interp(xs, *_sorted(pts[[0, 5, 4, 3]])), yu)
            sx = map_x[np.clip(yu.round().astype(int), 0, s - 1), xs.astype(int)]
            su = np.interp(sx, *_sorted(spts[[0, 1, 2, 3]]))  # the source's upper lash line (source pixels)
            sl = np.interp(sx, *_sorted(spts[[0, 5, 4, 3]]))  # and its lower lid
            ys = np.arange(y0, y1, dtype=np.float32)[:, None]
            top = yu - reach
            t = (ys - top) / np.maximum(yl - top, 1e-3)
            margin = self.config.lid_margin * open_gap  # stop short of the lash line's dark band and of the eye
            want = np.where(ys <= yl, su - margin - (1.0 - np.clip(t, 0, 1)) * reach / scale * self.config.lid_skin,  # upper lid skin
                            sl + margin + (ys - yl) / scale)  # then the lower lid's skin
            depth = (ys - yl) / max(below, 1e-3)  # 0 at the closed lid line, 1 at the end of the band below
            inside = np.clip(np.minimum((t + 0.15) / 0.15, (1.0 - depth) / 0.3), 0, 1)  # feathered top and bottom
            taper = np.clip(np.minimum(xs - pts[0, 0], pts[3, 0] - xs) / (0.08 * width) + 0.3, 0, 1)
            w = (inside * taper * amount).astype(np.float32)
            box = np.s_[y0:y1, x0:x1]
            map_y[box] += (want.astype(np.float32) - map_y[box]) * w

    def _fill_mouth(self, image: np.ndarray, target: np.ndarray, frame: DriverFrame, scale: float) -> None:
        """Paint the mouth interior where the target lips open wider than the source's."""
        down = self._down_src
        gap = _gaps(_z(target), LIP_PAIRS, down).mean() / max(scale, 1e-6)
        excess = gap - self._src_lip
        # From the driver: ramp in over a wider range when the source already shows its mouth, so its own
        # (stretched) teeth give way to the driver's gradually instead of switching in one frame.
        ramp = 0.05 * self._iod + (0.5 * self._src_lip if self.config.driver_mouth else 0.0)
        amount = float(np.clip(excess / ramp, 0.0, 1.0))
        if amount <= 0.0:
            return
        s = self.size
        lips = target[48:68]
        x0, y0 = np.floor(lips.min(0)).astype(int) - 2
        x1, y1 = np.ceil(lips.max(0)).astype(int) + 3
        x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, s), min(y1, s)
        if x1 - x0 < 3 or y1 - y0 < 3:
            return
        w, h = x1 - x0, y1 - y0
        inner = target[INNER_LIPS] - (x0, y0)
        mask = np.zeros((h, w), np.float32)
        outline = _rounded(inner)  # lips are curves: eight points joined by straight lines make a diamond
        cv2.fillPoly(mask, [np.round(outline * 4).astype(np.int32)], 1.0, lineType=cv2.LINE_AA, shift=2)
        mask = cv2.GaussianBlur(mask, (0, 0), max(0.6 * s / 256, 0.5)) * amount
        patch = None
        if self.config.driver_mouth and frame.image is not None:
            patch = self._driver_mouth(frame, target, (x0, y0, w, h))
            if patch is not None:  # a mouth interior is darker than the lips around it: keep it so
                inside = mask > 0.5 * amount
                lum = patch[inside].mean() if inside.any() else 0.0
                limit = max(self.config.mouth_darkness * self._lip_stats[0].mean(), 0.7 * self._src_mouth)
                if lum > limit:
                    patch *= limit / lum
        if patch is None:
            patch = self._synthetic_mouth(inner, (w, h), scale)
            if self._src_interior is not None:
                patch = self._source_mouth(inner, (x0, y0, w, h), patch)
        region = image[y0:y1, x0:x1].astype(np.float32)
        region += (patch - region) * mask[..., None]
        image[y0:y1, x0:x1] = np.clip(region + 0.5, 0, 255).astype(np.uint8)

    def _driver_mouth(self, frame: DriverFrame, target: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray | None:
        x0, y0, w, h = box
        idx = INNER_LIPS + OUTER_LIPS
        t = target[idx] - (x0, y0)
        d = frame.landmarks[idx]
        if not np.isfinite(d).all():
            return None
        # Affine from the target's lip points (box coordinates) to the driver's: the patch samples the driver crop.
        design = np.concatenate([t, np.ones((len(t), 1), np.float32)], 1)
        weights = np.r_[np.full(8, 3.0), np.ones(12)][:, None]  # the inner lips matter most
        m = np.linalg.lstsq(design * weights, d * weights, rcond=None)[0].T.astype(np.float32)
        if not np.isfinite(m).all():
            return None
        patch = cv2.warpAffine(frame.image, m, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                               borderMode=cv2.BORDER_REPLICATE)
        if self._drv_stats is None:
            self._drv_stats = _ring_stats(frame.image, frame.landmarks)
        return _match_colour(patch, self._drv_stats, self._lip_stats)

    def _synthetic_mouth(self, inner: np.ndarray, size: tuple[int, int], scale: float) -> np.ndarray:
        """A mouth interior drawn for the target inner lips (box coordinates): a cavity shaded from the lips'
        colour, upper teeth (coloured like the source's eye whites, separated, darker towards the corners),
        lower teeth and a tongue once the mouth is open wide enough."""
        w, h = size
        px = self.size / 256
        iod = self._iod * scale
        xs = np.arange(w, dtype=np.float32)
        yu = np.interp(xs, *_sorted(inner[[0, 1, 2, 3, 4]])).astype(np.float32)
        yl = np.maximum(np.interp(xs, *_sorted(inner[[4, 5, 6, 7, 0]])).astype(np.float32), yu)
        ys = np.arange(h, dtype=np.float32)[:, None]
        tall = np.maximum(yl - yu, 1.0)
        v = np.clip((ys - yu) / tall, 0, 1)  # 0 at the upper lip, 1 at the lower
        xl, xr = float(inner[:, 0].min()), float(inner[:, 0].max())
        half = max((xr - xl) / 2, 1.0)
        u = np.clip((xs - (xl + xr) / 2) / half, -1, 1)  # -1 .. 1 across the mouth
        opened = float(tall.max()) / max(iod, 1e-6)  # the opening, in eye distances
        lip = self._lip_stats[0]
        # The cavity: dark, darkest at the back (middle) and in the corners.
        cavity = lip * (0.16 + 0.12 * np.abs(v - 0.55))[..., None] * (1.0 - 0.35 * u * u)[None, :, None]
        out = cavity.astype(np.float32)
        # Tongue: a rounded shape resting on the lower lip, once the mouth is open.
        t_amount = float(np.clip((opened - 0.12) / 0.1, 0, 1))
        if t_amount > 0:
            cy = yl + 0.1 * tall
            r = ((xs - (xl + xr) / 2) / (0.62 * half)) ** 2 + ((ys - cy) / (0.5 * tall)) ** 2
            tongue_mask = np.clip((1.0 - r) / 0.25, 0, 1) * t_amount
            shade = np.clip(0.45 + 0.55 * (ys - (cy - 0.5 * tall)) / (0.5 * tall), 0.3, 1.0)  # darker at the back
            tongue = lip * np.array([0.95, 0.62, 0.62], np.float32) * 0.62 * shade[..., None]
            out += (tongue - out) * tongue_mask[..., None]
        # Teeth, arched: separations bunch up towards the corners.
        teeth = self._teeth * self.config.teeth
        phase = np.arcsin(u) / (np.pi / 2) * half / max(0.13 * iod, 1.0)  # tooth widths from the middle
        gaps = 1.0 - 0.12 * np.exp(-(((phase - np.round(phase)) * 0.13 * iod / (0.4 * px)) ** 2))
        corner = 1.0 - 0.5 * u ** 4 - 0.15 * u * u
        up_h = np.minimum(0.15 * iod, 0.5 * tall)  # upper teeth, down from the upper lip
        band = np.clip((yu + up_h - ys) / (0.6 * px), 0, 1) * np.clip((ys - yu + 0.5) / (0.8 * px), 0, 1)
        under_lip = 1.0 - 0.35 * np.exp(-((ys - yu) / (1.2 * px)) ** 2)  # the lip's shadow on the teeth
        t_up = teeth * (corner * gaps)[None, :, None] * under_lip[..., None]
        show = float(np.clip((opened - 0.03) / 0.05, 0, 1))
        out += (t_up - out) * (band * show)[..., None]
        lo_amount = float(np.clip((opened - 0.26) / 0.08, 0, 1))
        if lo_amount > 0:  # lower teeth, partly behind the lower lip, in shade
            lo_h = np.minimum(0.05 * iod, 0.15 * tall)
            lo_band = np.clip((ys - (yl - lo_h)) / (0.6 * px), 0, 1) * (ys <= yl + 1)
            t_lo = teeth * 0.5 * (corner * gaps)[None, :, None]
            out += (t_lo - out) * (lo_band * lo_amount * (1 - np.abs(u)) ** 2)[..., None]
        return cv2.GaussianBlur(out, (0, 0), 0.5 * px)

    def _source_mouth(self, inner: np.ndarray, box: tuple[int, int, int, int], synthetic: np.ndarray) -> np.ndarray:
        """The source's own mouth interior (its teeth), carried by the upper lip at its own size, over
        `synthetic` where the source's interior ends (below its lower lip)."""
        x0, y0, w, h = box
        a, b = fit_similarity(_z(inner[[0, 1, 2, 3, 4]]), self._src[[60, 61, 62, 63, 64]])  # box -> source
        m = np.array([[a.real, -a.imag, b.real], [a.imag, a.real, b.imag]], np.float32)
        flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
        patch = cv2.warpAffine(self.source, m, (w, h), flags=flags, borderMode=cv2.BORDER_REPLICATE).astype(np.float32)
        valid = cv2.warpAffine(self._src_interior, m, (w, h), flags=flags, borderMode=cv2.BORDER_CONSTANT)
        return synthetic + (patch - synthetic) * valid[..., None]


_POSE_MODEL = MEAN_FACE[POSE_POINTS] - MEAN_FACE[POSE_POINTS].mean(0)
_POSE_PINV = np.linalg.pinv(_POSE_MODEL)  # (3, n): least-squares affine camera from 2-D points


def fit_pose(points: np.ndarray) -> tuple[np.ndarray, float, np.ndarray]:
    """Weak-perspective fit of the mean face to 68 landmarks (x, y): rotation (3x3), scale, 2-D centre.

    An affine camera is fitted by least squares to the jaw, brows, nose and eyes,
    then its two rows are made orthonormal (the nearest rotation); the third row
    is their cross product.
    """
    u = np.asarray(points, np.float64)[POSE_POINTS]
    centre = u.mean(0)
    camera = (_POSE_PINV @ (u - centre)).T  # (2, 3)
    left, sv, right = np.linalg.svd(camera, full_matrices=False)
    rows = left @ right
    return np.vstack([rows, np.cross(rows[0], rows[1])]), float(sv.mean()), centre


def _lift(points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Landmarks in 3-D: their own x, y, the fitted mean face's depth; and the head centre, and the rotation."""
    rot, scale, centre = fit_pose(points)
    mean = MEAN_FACE[POSE_POINTS].mean(0)
    depth = scale * (MEAN_FACE - mean) @ rot[2]
    head = scale * rot @ (HEAD_CENTRE - mean)
    p3 = np.c_[np.asarray(points, np.float64), depth]
    return p3, np.r_[centre + head[:2], head[2]], rot


def _rotate(points: np.ndarray, centre: np.ndarray, rot: np.ndarray) -> np.ndarray:
    """3-D points (N, 3) turned by `rot` about `centre`, projected (orthographic) as complex x + iy."""
    q = (points - centre) @ rot.T + centre
    return q[:, 0] + 1j * q[:, 1]


def swing(forward: np.ndarray, gain: float = 1.0, limit: float = np.pi / 2) -> np.ndarray:
    """The rotation (3x3) that takes the line of sight (0, 0, 1) to `forward` with no twist about it (no roll),
    its angle times `gain` and softly limited (tanh) to `limit` radians."""
    axis = np.array([-forward[1], forward[0], 0.0])  # (0, 0, 1) x forward
    sin = float(np.linalg.norm(axis))
    if sin < 1e-9:
        return np.eye(3)
    angle = np.arctan2(sin, forward[2]) * gain
    if limit > 0:
        angle = limit * np.tanh(angle / limit)
    k = axis / sin
    cross = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(angle) * cross + (1 - np.cos(angle)) * cross @ cross


def _ear(z: np.ndarray) -> np.ndarray:
    """Eye aspect ratio of each eye (2,), from complex landmarks."""
    out = []
    for e in (36, 42):
        v = abs(z[e + 1] - z[e + 5]) + abs(z[e + 2] - z[e + 4])
        out.append(v / max(2 * abs(z[e] - z[e + 3]), 1e-6))
    return np.array(out)


def _teeth_colour(image: np.ndarray, lm: np.ndarray, lip: np.ndarray) -> np.ndarray:
    """Teeth colour for a drawn mouth: the source's eye whites (its light and colour balance), a little
    yellower; from the lips' brightness when the eyes are too small to tell."""
    mask = np.zeros(image.shape[:2], np.uint8)
    for eye in (slice(36, 42), slice(42, 48)):
        cv2.fillPoly(mask, [np.round(lm[eye]).astype(np.int32)], 1)
    pixels = image[mask > 0].astype(np.float32)
    if len(pixels) >= 30:
        luma = pixels @ np.array([0.299, 0.587, 0.114], np.float32)
        white = np.median(pixels[luma >= np.percentile(luma, 80)], axis=0)
        if white.mean() > 1.15 * lip.mean():
            return white * np.array([0.97, 0.95, 0.88], np.float32)
    return np.array([200, 192, 180], np.float32) * (lip.mean() / 140.0) ** 0.5


def _iris_offset(image: np.ndarray, lm: np.ndarray) -> np.ndarray | None:
    """Where the irises sit in the eye openings: (x, y) offset of the darkness-weighted centre from the eye's
    centre, in eye widths, both eyes averaged; None when the eyes are too small or show no contrast."""
    offsets = []
    h, w = image.shape[:2]
    for eye in (slice(36, 42), slice(42, 48)):
        pts = np.asarray(lm[eye], np.float32)
        width = float(np.linalg.norm(pts[3] - pts[0]))
        x0, y0 = np.floor(pts.min(0)).astype(int)
        x1, y1 = np.ceil(pts.max(0)).astype(int) + 1
        if width < 8 or x0 < 0 or y0 < 0 or x1 > w or y1 > h or y1 - y0 < 3:
            continue
        grey = cv2.cvtColor(np.ascontiguousarray(image[y0:y1, x0:x1]), cv2.COLOR_RGB2GRAY).astype(np.float32)
        mask = np.zeros(grey.shape, np.uint8)
        cv2.fillPoly(mask, [np.round(pts - (x0, y0)).astype(np.int32)], 1)
        values = grey[mask > 0]
        if values.size < 12 or np.ptp(values) < 25:
            continue
        dark = np.clip(np.percentile(values, 60) - grey, 0, None) * (mask > 0)
        dark = dark**2
        if dark.sum() <= 0:
            continue
        yy, xx = np.mgrid[y0:y1, x0:x1]
        centre = np.array([(xx * dark).sum(), (yy * dark).sum()]) / dark.sum()
        axis = (pts[3] - pts[0]) / width
        d = centre - pts.mean(0)
        offsets.append(np.array([d @ axis, d @ np.array([-axis[1], axis[0]])]) / width)
    return np.mean(offsets, axis=0) if offsets else None


def _lid_colours(image: np.ndarray, lm: np.ndarray, eye: int) -> tuple[np.ndarray, np.ndarray]:
    """Median skin colour (RGB) of the upper lid (between the lash line and the brow, nearer the lid) and of
    the skin just under the lower lid, for painting a closed eye."""
    pts = lm[eye:eye + 6].astype(np.float64)
    gap = max(float(np.mean([pts[5, 1] - pts[1, 1], pts[4, 1] - pts[2, 1]])), 1.0)
    xs = np.linspace(pts[0, 0] + 0.2 * (pts[3, 0] - pts[0, 0]), pts[3, 0] - 0.2 * (pts[3, 0] - pts[0, 0]), 9)
    upper, lower = np.interp(xs, *_sorted(pts[[0, 1, 2, 3]])), np.interp(xs, *_sorted(pts[[0, 5, 4, 3]]))
    h, w = image.shape[:2]

    def sample(rows: np.ndarray) -> np.ndarray:
        yy = np.clip(np.round(rows).astype(int), 0, h - 1)
        xx = np.clip(np.round(np.broadcast_to(xs, rows.shape)).astype(int), 0, w - 1)
        return np.median(image[yy, xx].reshape(-1, 3).astype(np.float32), axis=0)

    above = sample(upper[None] - gap * np.array([0.6, 0.8, 1.0])[:, None])
    below = sample(lower[None] + gap * np.array([0.4, 0.6, 0.8])[:, None])
    return above, below


def _rounded(polygon: np.ndarray, rounds: int = 2) -> np.ndarray:
    """A closed polygon's corners cut (Chaikin): a smooth outline through its points' neighbourhood."""
    p = np.asarray(polygon, np.float32)
    for _ in range(rounds):
        q = np.roll(p, -1, axis=0)
        p = np.stack([0.75 * p + 0.25 * q, 0.25 * p + 0.75 * q], 1).reshape(-1, 2)
    return p


def _sorted(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(points[:, 0])
    return points[order, 0], points[order, 1]


def _ring_stats(image: np.ndarray | None, lm: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Mean and standard deviation (YCrCb, and RGB mean) of the lips: between outer and inner lip outlines."""
    if image is None:
        return None
    x0, y0 = np.floor(lm[48:60].min(0)).astype(int) - 1
    x1, y1 = np.ceil(lm[48:60].max(0)).astype(int) + 2
    h, w = image.shape[:2]
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if x1 - x0 < 2 or y1 - y0 < 2:
        return None
    crop = image[y0:y1, x0:x1]
    mask = np.zeros(crop.shape[:2], np.uint8)
    cv2.fillPoly(mask, [np.round(lm[48:60] - (x0, y0)).astype(np.int32)], 1)
    cv2.fillPoly(mask, [np.round(lm[60:68] - (x0, y0)).astype(np.int32)], 0)
    if mask.sum() < 4:
        mask[:] = 1
    ycc = cv2.cvtColor(crop, cv2.COLOR_RGB2YCrCb)[mask > 0].astype(np.float32)
    rgb = crop[mask > 0].astype(np.float32)
    return rgb.mean(0), np.stack([ycc.mean(0), ycc.std(0) + 1.0])


def _mouth_brightness(image: np.ndarray, lm: np.ndarray) -> float:
    """Mean brightness inside the inner lips (0 when they enclose under 20 pixels)."""
    mask = np.zeros(image.shape[:2], np.uint8)
    cv2.fillPoly(mask, [np.round(lm[60:68]).astype(np.int32)], 1)
    return float(image[mask > 0].mean()) if mask.sum() >= 20 else 0.0


def _match_colour(patch: np.ndarray, driver: tuple | None, source: tuple | None) -> np.ndarray:
    """Carry the driver's mouth into the source's lighting: luminance by ratio, chroma around the source's lips."""
    if driver is None or source is None:
        return patch.astype(np.float32)
    (dm, ds), (sm, ss) = driver[1], source[1]
    ycc = cv2.cvtColor(patch, cv2.COLOR_RGB2YCrCb).astype(np.float32)
    ycc[..., 0] *= sm[0] / max(dm[0], 1.0)
    k = np.clip(ss[1:] / ds[1:], 0.0, 1.0)
    ycc[..., 1:] = sm[1:] + (ycc[..., 1:] - dm[1:]) * k
    out = cv2.cvtColor(np.clip(ycc, 0, 255).astype(np.uint8), cv2.COLOR_YCrCb2RGB)
    return out.astype(np.float32)
