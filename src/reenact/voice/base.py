"""The voice-backend protocol.

A voice backend converts mono speech to a subject's voice with a model file or folder that it recognises.
`voice/convert.py` does everything around it (decoding any audio or video file, resampling, streaming long
inputs, writing the output atomically), so a new backend is one file implementing `VoiceBackend` plus one
line in `VOICE_BACKENDS`; see docs/voice.md, "Adding a voice backend".

A backend's options are a dataclass (`Options`): the caller's options dict is checked against its fields,
and an option the backend does not take is refused with one line instead of being silently ignored.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterable, Iterator, Protocol, runtime_checkable

import numpy as np

from reenact.errors import ReenactError
from reenact.registry import lookup
from reenact.voice.signal import pause_pieces

Progress = Callable[[int, int], None]  # progress(done, total); total 0 while not known


@runtime_checkable
class VoiceBackend(Protocol):
    """What every voice backend provides."""

    name: ClassVar[str]
    Options: ClassVar[type]  # a dataclass of the backend's options (loading and conversion)
    sample_rate: int  # of the converted audio

    @classmethod
    def recognises(cls, path: Path) -> bool:
        """Whether `path` looks like one of this backend's models (by its suffix or layout, not its content)."""

    @classmethod
    def model_files(cls, path: Path) -> dict[str, Path]:
        """The files the model at `path` loads, by the names they have in its layout (for hashes and copies);
        raises ReenactError when one is missing."""

    @classmethod
    def load(cls, path: Path, options: Any) -> "VoiceBackend":
        """Load the model at `path` with `options` (an instance of `Options`)."""

    def convert(self, x: np.ndarray, sr: int, transpose: str | float, progress: Progress | None = None) -> np.ndarray:
        """Mono float audio at `sr` -> converted mono float32 audio at `sample_rate`, of the same duration.
        `transpose` is "auto" (to the subject's range) or semitones."""

    # Optional: `convert_stream(read, rate, transpose, progress) -> Iterator[np.ndarray]` converts an input
    # that `read()` yields as mono blocks at `rate` (it may be read more than once), in bounded memory.


# name -> "module:class", in the order "auto" asks them whether they recognise a model
VOICE_BACKENDS: dict[str, str] = {
    "world": "reenact.voice.world.backend:WorldBackend",
    "sovits": "reenact.voice.sovits.backend:SovitsBackend",
}


def backend_class(name: str) -> type:
    """The class of a registered voice backend (imported only when asked for)."""
    return lookup(VOICE_BACKENDS, name,
                  f"unknown voice backend {name!r}; choose one of: auto, {', '.join(VOICE_BACKENDS)}")


def detect_backend(model: str | Path) -> str:
    """The name of the backend whose models look like `model`."""
    path = Path(model).expanduser()
    for name in VOICE_BACKENDS:
        if backend_class(name).recognises(path):
            return name
    raise ReenactError("not a voice model: give a .safetensors file (world backend) or a so-vits-svc model "
                       "folder / G_*.pth (sovits backend)", path)


def model_files(model: str | Path) -> dict[str, Path]:
    """The files of a voice model (see `VoiceBackend.model_files`), checked to exist."""
    path = Path(model).expanduser()
    if not path.exists():
        raise ReenactError("voice model not found", path)
    return backend_class(detect_backend(path)).model_files(path)


def make_options(cls: type, options: dict | None) -> Any:
    """`cls.Options` from a dict; None values mean "not given". An option the backend does not take is refused."""
    given = {k: v for k, v in (options or {}).items() if v is not None}
    fields = {f.name for f in dataclasses.fields(cls.Options)}
    unknown = sorted(set(given) - fields)
    if unknown:
        flags = ", ".join("--" + k.replace("_", "-") for k in unknown)
        takes = ", ".join("--" + f.replace("_", "-") for f in sorted(fields)) or "no options"
        raise ReenactError(f"{flags} {'does' if len(unknown) == 1 else 'do'} not apply to the {cls.name} voice "
                           f"backend (it takes {takes})")
    return cls.Options(**given)


def load_backend(model: str | Path, backend: str = "auto", options: dict | None = None) -> VoiceBackend:
    """Load a voice model with the named backend (or the one that recognises it)."""
    path = Path(model).expanduser()
    if not path.exists():
        raise ReenactError("voice model not found", path)
    name = detect_backend(path) if backend == "auto" else backend
    cls = backend_class(name)
    return cls.load(path, make_options(cls, options))


def stream_in_pieces(voice: VoiceBackend, read: Callable[[], Iterable[np.ndarray]], rate: int,
                     transpose: str | float, seconds: float, progress: Progress | None = None) -> Iterator[np.ndarray]:
    """A backend-neutral `convert_stream`: cut the input in pauses into pieces of about `seconds` and convert
    each on its own. Used for backends without their own; "auto" transposition then follows each piece."""
    for i, piece in enumerate(pause_pieces(read(), rate, seconds)):
        yield voice.convert(piece, rate, transpose)
        if progress:
            progress(i + 1, 0)
