"""The motion-backend protocol.

A backend turns a source face crop plus a stream of driver face crops into
animated source crops. The pipeline does everything around it (detection,
tracking, cropping, choosing the reference frame, paste back, encoding), so a
new backend is one file implementing `Backend` and one entry in `BACKENDS`.
The backend states what the pipeline must know before it starts: the crop sizes
it works at (and which one "auto" means for a given face), where its square
crop sits around the face, and where its output may differ from the source
(its paste mask); the pipeline asks once.

Coordinates: all landmarks handed to a backend are 68-point dlib/iBUG layouts
in pixel coordinates of the square crop (0..size), float32, shape (68, 2).
Images are RGB uint8 (size, size, 3).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Protocol, Sequence, runtime_checkable

import numpy as np

from reenact.errors import ReenactError
from reenact.registry import lookup
from reenact.face.align import CropConfig


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
    sizes: ClassVar[tuple[int, ...]]  # crop sizes (px) it works at
    crop: ClassVar[CropConfig]  # where its square crop sits around the face (the networks' training crop)
    size: int  # crop size in pixels, one of `sizes`
    needs_driver_images: bool  # False lets the pipeline skip cropping driver frames

    @classmethod
    def auto_size(cls, face_side: float, options: dict) -> int:
        """The size "auto" means for a portrait whose crop box is `face_side` pixels wide, with these options."""

    def paste_mask(self) -> np.ndarray | None:
        """(S, S) float32 mask for pasting crops back, 1 wherever the output may differ from the source; None
        for the pipeline's feathered, colour-matched face mask."""

    def prepare(self, source: SourceFace, reference: DriverFrame) -> None:
        """Take the source once; `reference` is the driver frame motion is measured from."""

    def animate(self, frames: Sequence[DriverFrame]) -> np.ndarray:
        """Animated source crops for a batch of driver frames: (B, S, S, 3) uint8."""


# name -> "module:factory"; a factory takes (size: int, **options) and returns a Backend.
BACKENDS: dict[str, str] = {
    "landmark": "reenact.animate.landmark:LandmarkBackend",
    "lia": "reenact.animate.lia:LiaBackend",
    "liveportrait": "reenact.animate.liveportrait:LivePortraitBackend",
}


def backend_class(name: str) -> type:
    """The class of a registered backend (imported only when asked for)."""
    return lookup(BACKENDS, name, f"unknown backend {name!r}; choose one of: {', '.join(sorted(BACKENDS))}")


def resolve_size(cls: type, size: int | str, face_side: float, options: dict) -> int:
    """The crop size for `size` ("auto" or a number of pixels) with backend class `cls`."""
    if size == "auto":
        return int(cls.auto_size(face_side, options))
    if size not in cls.sizes:
        raise ReenactError(f"--size must be {', '.join(map(str, cls.sizes))} or auto for the {cls.name} backend, "
                           f"not {size}")
    return int(size)


def create_backend(name: str, size: int = 256, **options) -> Backend:
    """Instantiate a registered backend by name."""
    return backend_class(name)(size=size, **options)
