"""The motion-backend protocol.

A backend turns a source face crop plus a stream of driver face crops into
animated source crops. The pipeline does everything around it (detection,
tracking, cropping, choosing the reference frame, paste back, encoding), so a
new backend is one file implementing `Backend` and one entry in `BACKENDS`.

Coordinates: all landmarks handed to a backend are 68-point dlib/iBUG layouts
in pixel coordinates of the square crop (0..size), float32, shape (68, 2).
Images are RGB uint8 (size, size, 3).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Protocol, Sequence, runtime_checkable

import numpy as np


@dataclass
class SourceFace:
    """The portrait's face crop and its landmarks (crop coordinates)."""

    image: np.ndarray  # (S, S, 3) uint8 RGB
    landmarks: np.ndarray  # (68, 2) float32


@dataclass
class DriverFrame:
    """One driver frame: its face crop (if the backend asked for images) and landmarks.

    `landmarks` are in crop coordinates of the driver's (smoothed, slowly moving)
    crop box, so head motion inside the crop is kept. `found` is False where no
    face was detected and the landmarks were bridged from neighbouring frames.
    """

    index: int
    landmarks: np.ndarray  # (68, 2) float32, crop coordinates
    image: np.ndarray | None = None  # (S, S, 3) uint8 RGB, or None
    found: bool = True


@runtime_checkable
class Backend(Protocol):
    """What every motion backend provides."""

    name: str
    size: int  # crop size in pixels (256 or 512)
    needs_driver_images: bool  # False lets the pipeline skip cropping driver frames

    def prepare(self, source: SourceFace, reference: DriverFrame) -> None:
        """Take the source once; `reference` is the driver frame motion is measured from."""

    def animate(self, frames: Sequence[DriverFrame]) -> np.ndarray:
        """Animated source crops for a batch of driver frames: (B, S, S, 3) uint8."""


# name -> "module:factory"; a factory takes (size: int, **options) and returns a Backend.
BACKENDS: dict[str, str] = {
    "landmark": "reenact.animate.landmark:LandmarkBackend",
    "lia": "reenact.animate.lia:LiaBackend",
}


def create_backend(name: str, size: int = 256, **options) -> Backend:
    """Instantiate a registered backend by name."""
    from reenact.errors import ReenactError

    if name not in BACKENDS:
        raise ReenactError(f"unknown backend {name!r}; choose one of: {', '.join(sorted(BACKENDS))}")
    module_name, factory = BACKENDS[name].split(":")
    return getattr(importlib.import_module(module_name), factory)(size=size, **options)
