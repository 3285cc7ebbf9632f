"""`--motion` regions for landmark-driven backends: expression keeps the head still, pose keeps the face."""

from __future__ import annotations

import numpy as np
import pytest

from reenact.animate.regions import normalize_region, restrict_landmarks
from reenact.errors import ReenactError


def face() -> np.ndarray:
    """A plausible 68-point layout (a circle of jaw points, brows, eyes, nose, mouth) in a 256 crop."""
    rng = np.random.default_rng(0)
    pts = np.zeros((68, 2))
    t = np.linspace(np.pi * 0.9, np.pi * 0.1, 17)
    pts[:17] = np.c_[128 - 70 * np.cos(t), 120 + 80 * np.sin(t)]
    pts[17:27] = np.c_[np.linspace(70, 186, 10), 90 + 3 * rng.standard_normal(10)]
    pts[27:36] = np.c_[128 + 5 * rng.standard_normal(9), np.linspace(100, 160, 9)]
    for k, cx in ((36, 95), (42, 161)):
        a = np.linspace(0, 2 * np.pi, 7)[:6]
        pts[k:k + 6] = np.c_[cx - 15 * np.cos(a), 110 - 6 * np.sin(a)]
    a = np.linspace(0, 2 * np.pi, 13)[:12]
    pts[48:60] = np.c_[128 - 30 * np.cos(a), 185 - 12 * np.sin(a)]
    a = np.linspace(0, 2 * np.pi, 9)[:8]
    pts[60:68] = np.c_[128 - 20 * np.cos(a), 185 - 4 * np.sin(a)]
    return pts.astype(np.float32)


def head(points: np.ndarray, angle: float = 0.1, scale: float = 1.05, shift=(6.0, -4.0)) -> np.ndarray:
    c, s = np.cos(angle) * scale, np.sin(angle) * scale
    return (points @ np.array([[c, s], [-s, c]]) + shift).astype(np.float32)


def open_mouth(points: np.ndarray) -> np.ndarray:
    out = points.copy()
    lower = [55, 56, 57, 58, 59, 64, 65, 66, 67]
    out[lower, 1] += 10
    return out


def test_regions_split_head_and_face():
    ref = face()
    mouth_only = open_mouth(ref)
    driver = head(mouth_only)  # the mouth opens and the head turns
    assert np.array_equal(restrict_landmarks(driver, ref, "all"), driver)
    expr = restrict_landmarks(driver, ref, "expression")
    # the head stays: stable points (nose, eye corners) at the reference; the mouth's shape change is kept
    assert np.abs(expr[[27, 30, 36, 39, 42, 45]] - ref[[27, 30, 36, 39, 42, 45]]).max() < 1.0
    gap = lambda p: p[66, 1] - p[62, 1]  # noqa: E731
    assert gap(expr) - gap(ref) == pytest.approx(gap(mouth_only) - gap(ref), abs=1.5)
    pose = restrict_landmarks(driver, ref, "pose")
    # the head moves as the driver's; the mouth keeps the reference's opening
    assert np.abs(pose[[27, 30, 36, 45]] - head(ref)[[27, 30, 36, 45]]).max() < 1.5
    assert np.linalg.norm(pose[66] - pose[62]) == pytest.approx(np.linalg.norm(head(ref)[66] - head(ref)[62]), abs=1.0)
    lips = restrict_landmarks(driver, ref, "lips")
    assert np.abs(lips[:48] - ref[:48]).max() < 1.0 and gap(lips) > gap(ref) + 5
    eyes = restrict_landmarks(driver, ref, "eyes")
    assert np.abs(eyes[48:] - ref[48:]).max() < 1e-3


def test_region_names():
    assert normalize_region("exp") == "expression" and normalize_region("lip") == "lips"
    with pytest.raises(ReenactError, match="--motion"):
        normalize_region("relative")
