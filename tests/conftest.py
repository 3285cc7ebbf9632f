"""Shared test helpers: where the shared assets are, and small media made on the fly."""

from __future__ import annotations

import shutil
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from reenact.face.align import CropConfig

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "assets"
EXAMPLES = REPO / "examples"


def shared(*parts: str) -> Path:
    """A path under ../shared/assets; skips the test when the folder is missing."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"needs the shared assets ({path} is missing)")
    return path


def needs_ffmpeg() -> str:
    exe = shutil.which("ffmpeg")
    if exe is None:
        pytest.skip("needs the ffmpeg CLI (apt-get install ffmpeg)")
    return exe


def pattern_frame(i: int, width: int, height: int) -> np.ndarray:
    """A frame whose content encodes its index (a moving bar), RGB uint8."""
    y, x = np.mgrid[0:height, 0:width]
    frame = np.stack([(x * 255 // max(width - 1, 1)), (y * 255 // max(height - 1, 1)),
                      np.full_like(x, 128)], -1).astype(np.uint8)
    bar = (i * 7) % width
    frame[:, bar:bar + 3] = 255
    return frame


def write_video(path: Path, n: int = 25, width: int = 64, height: int = 48, fps: int = 25,
                codec: str = "libx264", pix_fmt: str = "yuv420p", pts: list[int] | None = None,
                audio_seconds: float = 0.0, audio_rate: int = 16000, fmt: str | None = None) -> Path:
    """Write a small test video (optionally with a sine audio track and custom timestamps)."""
    with av.open(str(path), mode="w", format=fmt) as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        if pts is not None:
            stream.codec_context.time_base = Fraction(1, 1000)
        astream = out.add_stream("aac", rate=audio_rate, layout="mono") if audio_seconds else None
        for i in range(n):
            frame = av.VideoFrame.from_ndarray(pattern_frame(i, width, height), format="rgb24")
            frame = frame.reformat(format=pix_fmt)
            if pts is not None:
                frame.pts = pts[i]
                frame.time_base = Fraction(1, 1000)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
        if astream is not None:
            t = np.arange(int(audio_seconds * audio_rate)) / audio_rate
            wave = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None]
            for k in range(0, wave.shape[1], 1024):
                af = av.AudioFrame.from_ndarray(np.ascontiguousarray(wave[:, k:k + 1024]), format="fltp", layout="mono")
                af.sample_rate = audio_rate
                af.pts = k
                for packet in astream.encode(af):
                    out.mux(packet)
            for packet in astream.encode():
                out.mux(packet)
    return path


class StillBackend:
    """Returns the source crop unchanged: a pipeline run without a motion model."""

    name = "still"
    sizes = (256,)
    size = 256
    needs_driver_images = False
    crop = CropConfig()

    @classmethod
    def auto_size(cls, face_side, options):
        return 256

    def paste_mask(self):
        return None

    def prepare(self, source, reference) -> None:
        self.image = source.image
        self.reference = reference

    def animate(self, frames):
        return np.stack([self.image] * len(frames))


def _have_crepe() -> bool:
    """torchcrepe and resampy are installed (looked up, not imported: importing them at collection is slow)."""
    import importlib.util

    return all(importlib.util.find_spec(name) is not None for name in ("torchcrepe", "resampy"))


needs_crepe = pytest.mark.skipif(not _have_crepe(), reason="torchcrepe not installed (make installs it with --no-deps)")


@pytest.fixture
def example_portrait() -> Path:
    return EXAMPLES / "portrait.png"


@pytest.fixture
def example_driver() -> Path:
    return EXAMPLES / "driver.mp4"


@pytest.fixture
def one_thread():
    """One torch thread for tests of tiny models: extra threads only contend with whatever else runs."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
