"""`--motion` regions for landmark-driven motion: which part of the driver's motion reaches the source.

The regions are LivePortrait's `animation_region` (all, exp, pose, lip, eyes) under the names the CLI
shows (all, expression, pose, lips, eyes). LivePortrait applies them to its implicit keypoints itself;
for backends driven by 68-point landmarks `restrict_landmarks` rewrites each driver frame's landmarks
before the backend sees them:

* the head's motion is the similarity (scale, roll, shift) from the reference frame's landmarks to this
  frame's, fitted on stable points (eye corners, nose); what remains, in the reference frame, is the
  face's own motion;
* each feature (brows, eyes, mouth) is split into its centroid's move (which follows the head: a turn
  shifts the eyes) and its change of shape about the centroid (a blink, an open mouth);
* expression: the reference's landmarks plus the features' changes of shape (the head stays where the
  reference is, so the source's head stays still); lips / eyes: the same for the mouth / the eyes only;
* pose: this frame's landmarks minus the features' changes of shape (the head moves, the face keeps the
  reference's expression).
"""

from __future__ import annotations

import numpy as np

from reenact.errors import ReenactError

REGIONS = ("all", "expression", "pose", "lips", "eyes")
_ALIASES = {"exp": "expression", "lip": "lips", "eye": "eyes", "face": "expression", "head": "pose"}
STABLE = [27, 28, 29, 30, 31, 33, 35, 36, 39, 42, 45]  # nose bridge and base, eye corners
BROWS = [list(range(17, 22)), list(range(22, 27))]
EYES = [list(range(36, 42)), list(range(42, 48))]
MOUTH = [list(range(48, 68))]


def normalize_region(value: str) -> str:
    """A region name as the CLI spells it (official names accepted too)."""
    region = _ALIASES.get(value, value)
    if region not in REGIONS:
        raise ReenactError(f"--motion must be one of {', '.join(REGIONS)}, not {value!r}")
    return region


def _similarity(p: np.ndarray, q: np.ndarray) -> tuple[complex, complex]:
    """Least-squares z -> a z + b taking points p to q (complex arrays)."""
    pm, qm = p.mean(), q.mean()
    a = np.vdot(p - pm, q - qm) / max(np.vdot(p - pm, p - pm).real, 1e-12)
    return complex(a), complex(qm - a * pm)


def _shape_change(local: np.ndarray, reference: np.ndarray, groups: list[list[int]]) -> np.ndarray:
    """Per point of `groups`: its move minus its group's mean move (zero elsewhere)."""
    out = np.zeros_like(local)
    for g in groups:
        move = local[g] - reference[g]
        out[g] = move - move.mean()
    return out


def restrict_landmarks(driver: np.ndarray, reference: np.ndarray, region: str) -> np.ndarray:
    """The driver frame's (68, 2) landmarks with only `region`'s motion relative to `reference` kept."""
    if region == "all":
        return driver
    z = driver[:, 0].astype(np.float64) + 1j * driver[:, 1]
    r = reference[:, 0].astype(np.float64) + 1j * reference[:, 1]
    a, b = _similarity(r[STABLE], z[STABLE])
    if not (np.isfinite(a) and abs(a) > 1e-6):
        return driver
    local = (z - b) / a  # this frame with the head's motion undone
    groups = {"expression": BROWS + EYES + MOUTH, "pose": BROWS + EYES + MOUTH, "lips": MOUTH, "eyes": EYES}[region]
    change = _shape_change(local, r, groups)
    out = z - a * change if region == "pose" else r + change
    return np.stack([out.real, out.imag], 1).astype(np.float32)
