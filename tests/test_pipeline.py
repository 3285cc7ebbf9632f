"""End-to-end animate runs on the bundled example (no ../shared needed) and a shared driver."""

from __future__ import annotations

import logging
from pathlib import Path

import av
import numpy as np
import pytest

from conftest import StillBackend, shared
from reenact.errors import ReenactError
from reenact.media.video import iter_frames, probe
from reenact.pipeline import AnimateConfig, animate


def _streams(path: Path) -> tuple[int, float, float | None]:
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        audio = c.streams.audio[0] if c.streams.audio else None
        return (sum(1 for _ in c.decode(v)), float(v.average_rate),
                float(audio.duration * audio.time_base) if audio is not None else None)


@pytest.fixture
def example(example_portrait: Path, example_driver: Path) -> tuple[Path, Path]:
    if not (example_portrait.exists() and example_driver.exists()):
        pytest.skip("examples/ missing")
    return example_portrait, example_driver


def test_pipeline_keeps_frames_rate_and_audio(tmp_path: Path, example) -> None:
    portrait, driver = example
    out = tmp_path / "out.mp4"
    backend = StillBackend()
    result = animate(portrait, driver, out, AnimateConfig(reference="first"), backend=backend)
    info = probe(driver)
    n_out, fps_out, audio_out = _streams(out)
    n_in, _, audio_in = _streams(driver)
    assert abs(n_out - n_in) <= 1 and result.frames == n_out
    assert abs(fps_out - float(info.fps)) < 1e-3
    assert audio_out is not None and abs(audio_out - audio_in) < 0.05
    assert result.size == (probe(out).width, probe(out).height)
    assert backend.reference.index == 0 and backend.reference.landmarks.shape == (68, 2)
    assert [p.name for p in tmp_path.iterdir()] == ["out.mp4"]
    # The still backend pastes the portrait onto itself: the output is the portrait, up to the
    # invisible watermark and compression outside the face crop, and the crop's resampling inside.
    import cv2

    first = next(iter_frames(out))
    still = cv2.cvtColor(cv2.imread(str(portrait)), cv2.COLOR_BGR2RGB)[: first.shape[0], : first.shape[1]]
    diff = np.abs(first.astype(int) - still.astype(int))
    assert diff[:40, :100].mean() < 4 and diff[: first.shape[0] // 2].mean() < 8


def test_no_paste_back_writes_the_crop(tmp_path: Path, example) -> None:
    portrait, driver = example
    result = animate(portrait, driver, tmp_path / "crop.mp4", AnimateConfig(paste_back=False, size=256),
                     backend=StillBackend())
    info = probe(result.output)
    assert (info.width, info.height) == (256, 256)


@pytest.mark.slow
def test_landmark_backend_end_to_end(tmp_path: Path, example) -> None:
    portrait, driver = example
    out = tmp_path / "lm.mp4"
    result = animate(portrait, driver, out, AnimateConfig())
    n_out, _, audio_out = _streams(out)
    assert abs(n_out - _streams(driver)[0]) <= 1 and audio_out is not None
    frames = list(iter_frames(out))
    assert len(frames) == result.frames
    # The face moves: consecutive output frames differ inside the face, not in the corners.
    diff = np.abs(frames[40].astype(int) - frames[80].astype(int))
    assert diff.mean() > 0.2 and diff[:20, :20].mean() < 1.0


def test_two_faces_uses_the_largest_with_a_note(tmp_path: Path, example, caplog) -> None:
    _, driver = example
    portrait = shared("portraits", "two_people.jpg")
    with caplog.at_level(logging.WARNING):
        animate(portrait, driver, tmp_path / "two.mp4", AnimateConfig(), backend=StillBackend())
    assert any("2 faces" in r.getMessage() and "--face-index" in r.getMessage() for r in caplog.records)
    # the second person, with a driver that shows one face: the index is the portrait's, not the driver's
    result = animate(portrait, driver, tmp_path / "second.mp4", AnimateConfig(face_index=1), backend=StillBackend())
    assert result.frames > 0
    with pytest.raises(ReenactError, match="--driver-face-index 1"):
        animate(portrait, driver, tmp_path / "none.mp4", AnimateConfig(driver_face_index=1), backend=StillBackend())
    with pytest.raises(ReenactError, match="must be a .mp4 file"):
        animate(portrait, driver, tmp_path / "out.txt", AnimateConfig(), backend=StillBackend())


def test_crop_size_auto_is_512_for_large_faces_with_the_landmark_backend() -> None:
    from reenact.animate.base import backend_class, resolve_size

    landmark, lia = backend_class("landmark"), backend_class("lia")
    assert resolve_size(landmark, "auto", 460.0, {}) == 512  # the example portrait's crop: blown up 1.8x at 256
    assert resolve_size(landmark, "auto", 300.0, {}) == 256
    assert resolve_size(lia, "auto", 700.0, {}) == 256  # LIA's checkpoints are 256
    assert resolve_size(landmark, 256, 700.0, {}) == 256
    with pytest.raises(ReenactError, match="--size must be"):
        resolve_size(landmark, 300, 700.0, {})
