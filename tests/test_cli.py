"""Bad input gets one line naming the file and the problem, exit code 2, and no output."""

from __future__ import annotations

from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import pattern_frame, write_video
from reenact.cli import app

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, list(args))


@pytest.fixture
def portrait(example_portrait: Path) -> Path:
    if not example_portrait.exists():
        pytest.skip("examples/portrait.png missing")
    return example_portrait


def _wav(path: Path) -> Path:
    with av.open(str(path), "w") as out:
        s = out.add_stream("pcm_s16le", rate=8000, layout="mono")
        f = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        f.sample_rate, f.pts = 8000, 0
        for p in list(s.encode(f)) + list(s.encode()):
            out.mux(p)
    return path


def _check_one_line_error(result, path: Path, problem: str, out_dir: Path, before: set[str]) -> None:
    assert result.exit_code == 2, result.output
    text = result.output.strip()
    assert "Traceback" not in text
    assert len(text.splitlines()) == 1, text
    assert str(path) in text and problem in text, text
    assert {p.name for p in out_dir.iterdir()} == before  # nothing written or left behind


def test_bad_drivers(tmp_path: Path, portrait: Path) -> None:
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video" * 50)
    still = tmp_path / "still.png"
    cv2.imwrite(str(still), pattern_frame(0, 64, 64))
    audio_only = _wav(tmp_path / "speech.wav")
    full = write_video(tmp_path / "full.mkv", n=10, fmt="matroska").read_bytes()
    noframes = tmp_path / "noframes.mkv"
    noframes.write_bytes(full[: full.index(b"\x1f\x43\xb6\x75")])
    before = {p.name for p in tmp_path.iterdir()}
    out = tmp_path / "out.mp4"
    for driver, problem in [(junk, "cannot be read"), (still, "still image"), (audio_only, "no video stream"),
                            (noframes, "no frames"), (tmp_path / "missing.mp4", "not found")]:
        _check_one_line_error(run("animate", str(portrait), str(driver), "-o", str(out)), driver, problem,
                              tmp_path, before)


def test_output_in_missing_folder(tmp_path: Path, portrait: Path) -> None:
    driver = write_video(tmp_path / "d.mp4", n=5)
    out = tmp_path / "nope" / "out.mp4"
    result = run("animate", str(portrait), str(driver), "-o", str(out))
    _check_one_line_error(result, out, "does not exist", tmp_path, {"d.mp4"})


def test_source_without_face(tmp_path: Path) -> None:
    source = tmp_path / "wall.png"
    cv2.imwrite(str(source), np.full((200, 200, 3), 180, np.uint8))
    driver = write_video(tmp_path / "d.mp4", n=5)
    before = {p.name for p in tmp_path.iterdir()}
    result = run("animate", str(source), str(driver), "-o", str(tmp_path / "out.mp4"))
    _check_one_line_error(result, source, "no face found", tmp_path, before)


def test_unreadable_source(tmp_path: Path) -> None:
    source = tmp_path / "broken.jpg"
    source.write_bytes(b"\xff\xd8 not really a jpeg")
    driver = write_video(tmp_path / "d.mp4", n=5)
    before = {p.name for p in tmp_path.iterdir()}
    result = run("animate", str(source), str(driver), "-o", str(tmp_path / "out.mp4"))
    _check_one_line_error(result, source, "cannot be read as an image", tmp_path, before)


def test_help_explains_options() -> None:
    result = run("animate", "--help")
    assert result.exit_code == 0
    for option in ("--backend", "--size", "--reference", "--face-index", "--crf", "--no-paste-back"):
        assert option in result.output


def test_evaluate_face_plot_needs_an_image_name(tmp_path):
    result = run("evaluate", "face", str(tmp_path / "out.mp4"), "--source", str(tmp_path / "a.png"),
                 "--driver", str(tmp_path / "d.mp4"), "--plot", str(tmp_path / "plot.txt"))
    assert result.exit_code == 2 and "--plot needs a .png" in result.output
    assert not (tmp_path / "plot.txt").exists()
