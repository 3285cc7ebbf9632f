"""Pose and expression proxies from 68-point landmarks.

Cheap 2-D measures used to choose a reference frame, and by the evaluator to
compare an output's motion with its driver's: face scale, roll, yaw and pitch
proxies, mouth opening and eye opening (eye aspect ratio). iBUG 68 indices:
jaw 0-16, brows 17-26, nose 27-35, eyes 36-47, outer lips 48-59, inner 60-67.
"""

from __future__ import annotations

import numpy as np

LEFT_EYE = slice(36, 42)
RIGHT_EYE = slice(42, 48)


def eye_centres(lm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return lm[..., LEFT_EYE, :].mean(axis=-2), lm[..., RIGHT_EYE, :].mean(axis=-2)


def face_scale(lm: np.ndarray) -> np.ndarray:
    """Face size: distance between the eye centres (the usual landmark normaliser)."""
    a, b = eye_centres(lm)
    return np.linalg.norm(b - a, axis=-1)


def roll(lm: np.ndarray) -> np.ndarray:
    """In-plane rotation of the eye line, radians."""
    a, b = eye_centres(lm)
    d = b - a
    return np.arctan2(d[..., 1], d[..., 0])


def _upright(lm: np.ndarray) -> np.ndarray:
    """Landmarks rotated so the eye line is horizontal, centred between the eyes."""
    a, b = eye_centres(lm)
    centre = (a + b) / 2
    angle = -roll(lm)
    c, s = np.cos(angle), np.sin(angle)
    rot = np.stack([np.stack([c, -s], -1), np.stack([s, c], -1)], -2)  # (..., 2, 2)
    return np.einsum("...ij,...nj->...ni", rot, lm - centre[..., None, :])


def yaw(lm: np.ndarray) -> np.ndarray:
    """Left-right turn proxy: nose-tip offset from the jaw's midline, over jaw width (about -0.5..0.5)."""
    u = _upright(lm)
    left, right = u[..., 0, 0], u[..., 16, 0]
    return (u[..., 30, 0] - (left + right) / 2) / np.maximum(right - left, 1e-6)


def pitch(lm: np.ndarray) -> np.ndarray:
    """Up-down nod proxy: nose-tip height between the eye line and the chin (about 0.3..0.6)."""
    u = _upright(lm)
    return u[..., 30, 1] / np.maximum(u[..., 8, 1], 1e-6)


def mouth_opening(lm: np.ndarray) -> np.ndarray:
    """Inner-lip gap (mean of three vertical pairs) over face scale."""
    gap = np.linalg.norm(lm[..., [61, 62, 63], :] - lm[..., [67, 66, 65], :], axis=-1).mean(axis=-1)
    return gap / np.maximum(face_scale(lm), 1e-6)


def eye_opening(lm: np.ndarray) -> np.ndarray:
    """Eye aspect ratio averaged over both eyes (about 0.3 open, under 0.15 closed)."""

    def ear(eye: np.ndarray) -> np.ndarray:
        v = np.linalg.norm(eye[..., 1, :] - eye[..., 5, :], axis=-1) + np.linalg.norm(eye[..., 2, :] - eye[..., 4, :], axis=-1)
        h = np.linalg.norm(eye[..., 0, :] - eye[..., 3, :], axis=-1)
        return v / np.maximum(2 * h, 1e-6)

    return (ear(lm[..., LEFT_EYE, :]) + ear(lm[..., RIGHT_EYE, :])) / 2


def pose_vector(lm: np.ndarray) -> np.ndarray:
    """(yaw, pitch, roll, mouth, eyes) per frame, for nearest-pose search."""
    return np.stack([yaw(lm), pitch(lm), roll(lm), mouth_opening(lm), eye_opening(lm)], axis=-1)


def eyes_shut(eyes: np.ndarray, closed: float = 0.7) -> np.ndarray:
    """Which frames show the eyes shut: an eye aspect ratio under `closed` times the clip's open level
    (its 75th percentile), as in a blink."""
    eyes = np.asarray(eyes, np.float64)
    return eyes < closed * np.percentile(eyes, 75)


def closest_pose(driver: np.ndarray, source: np.ndarray) -> int:
    """Index of the driver frame whose pose (and mouth/eye state) is closest to the source's.

    Head pose dominates; a closed mouth and open eyes like the source's break ties,
    so relative motion starts from a matching expression. A frame with the eyes shut (`eyes_shut`,
    as in a blink) is taken only if every frame has them shut. Frames where the head is far
    from where it usually is in the clip, or nearer or further than usual, cost extra:
    relative motion measured from them would push every other frame's head far off.
    """
    weights = np.array([4.0, 4.0, 2.0, 1.0, 1.0])
    d = pose_vector(driver) - pose_vector(source)[None]
    cost = ((d * weights) ** 2).sum(axis=-1)
    scale = face_scale(driver)
    typical = np.median(scale)
    centre = driver.mean(axis=-2)
    offset = np.linalg.norm(centre - np.median(centre, axis=0), axis=-1) / max(float(typical), 1e-6)
    cost += offset**2 + (4.0 * np.log(np.maximum(scale, 1e-6) / max(float(typical), 1e-6))) ** 2
    # Never a frame caught mid-blink while others have the eyes open: motion measured from shut eyes reads
    # every open-eyed frame as eyes opened wide, and a shut-eye baseline hides the blinks themselves.
    cost += 1e6 * eyes_shut(eye_opening(driver))
    return int(np.argmin(cost))
