"""Streaming decode/encode and audio mux on small generated media."""

from __future__ import annotations

import subprocess
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from conftest import needs_ffmpeg, pattern_frame, write_video
from reenact.errors import ReenactError
from reenact.media.audio import Audio, read_audio
from reenact.media.video import VideoWriter, iter_frames, probe


def test_decode_constant_rate(tmp_path: Path) -> None:
    path = write_video(tmp_path / "a.mp4", n=30, fps=25)
    info = probe(path)
    frames = list(iter_frames(path))
    assert (info.width, info.height, info.fps) == (64, 48, Fraction(25))
    assert len(frames) == 30
    assert frames[0].dtype == np.uint8 and frames[0].shape == (48, 64, 3)


def test_variable_frame_rate_is_resampled_by_timestamp(tmp_path: Path) -> None:
    # 40 ms grid with frames 3 and 4 missing and an extra frame squeezed in at 20 ms.
    pts = [0, 20, 40, 80, 200, 240, 280, 320]
    path = write_video(tmp_path / "vfr.mkv", n=len(pts), fps=25, pts=pts, fmt="matroska")
    frames = list(iter_frames(path, fps=Fraction(25)))
    # slots 0..8 at 40 ms: 0,(20 dropped),40->1,80->2, 120/160 filled, 200->5 ... 320->8
    assert len(frames) == 9
    assert np.array_equal(frames[3], frames[2]) and np.array_equal(frames[4], frames[2])


def test_ten_bit_and_odd_size(tmp_path: Path) -> None:
    path = write_video(tmp_path / "ten.mkv", n=5, width=65, height=49, codec="ffv1",
                       pix_fmt="yuv420p10le", fmt="matroska")
    info = probe(path)
    frames = list(iter_frames(path))
    assert (info.width, info.height) == (65, 49)
    assert len(frames) == 5 and frames[0].shape == (49, 65, 3) and frames[0].dtype == np.uint8
    # content survives: the gradient's left column is dark, right column bright in red
    assert frames[0][:, -1, 0].mean() > 200 and frames[0][:, 10, 0].mean() < 60


def test_rotation_metadata_is_applied(tmp_path: Path) -> None:
    ffmpeg = needs_ffmpeg()
    plain = write_video(tmp_path / "plain.mp4", n=5, width=64, height=32)
    rotated = tmp_path / "rot.mp4"
    subprocess.run([ffmpeg, "-v", "error", "-i", str(plain), "-c", "copy", "-metadata:s:v:0", "rotate=90",
                    str(rotated)], check=True)
    info = probe(rotated)
    if info.rotation == 0:
        pytest.skip("this ffmpeg did not store the rotation")
    frame = next(iter_frames(rotated))
    assert (info.width, info.height) == (32, 64)
    assert frame.shape == (64, 32, 3)
    # Compare with ffmpeg's own autorotated decode.
    raw = subprocess.run([ffmpeg, "-v", "error", "-i", str(rotated), "-frames:v", "1", "-f", "rawvideo",
                          "-pix_fmt", "rgb24", "-"], check=True, capture_output=True).stdout
    expected = np.frombuffer(raw, np.uint8).reshape(64, 32, 3)
    assert np.abs(frame.astype(int) - expected.astype(int)).mean() < 8


def test_writer_is_atomic_and_pads_odd_sizes(tmp_path: Path) -> None:
    out = tmp_path / "out.mp4"
    with VideoWriter(out, Fraction(25)) as writer:
        for i in range(10):
            writer.write(pattern_frame(i, 63, 47))
        assert not out.exists()  # nothing at the final path until closed
    info = probe(out)
    assert (info.width, info.height) == (64, 48)
    assert sum(1 for _ in iter_frames(out)) == 10
    assert [p.name for p in tmp_path.iterdir()] == ["out.mp4"]


def test_writer_abort_leaves_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out.mp4"
    with pytest.raises(RuntimeError):
        with VideoWriter(out, 25) as writer:
            writer.write(pattern_frame(0, 64, 48))
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_mux_keeps_duration_and_audio(tmp_path: Path) -> None:
    driver = write_video(tmp_path / "drv.mp4", n=50, fps=25, audio_seconds=2.0, audio_rate=16000)
    out = tmp_path / "out.mp4"
    writer = VideoWriter(out, probe(driver).fps)
    for frame in iter_frames(driver):
        writer.write(frame)
    writer.close(audio=driver)
    with av.open(str(out)) as c:
        assert c.streams.audio and c.streams.audio[0].codec_context.name == "aac"
        duration = c.duration / av.time_base
    assert abs(duration - 2.0) <= 1 / 25 + 0.03
    audio = read_audio(out)
    assert audio.sample_rate == 16000 and abs(audio.duration - 2.0) < 0.1
    # the tone survives AAC: strong 440 Hz
    spectrum = np.abs(np.fft.rfft(audio.mono()[4000:20000]))
    assert abs(np.argmax(spectrum) * 16000 / 16000 - 440) < 5


def test_mux_audio_from_memory(tmp_path: Path) -> None:
    out = tmp_path / "out.mp4"
    writer = VideoWriter(out, 25)
    for i in range(25):
        writer.write(pattern_frame(i, 64, 48))
    writer.close(audio=Audio(np.zeros(22050, np.float32), 22050))
    assert abs(read_audio(out).duration - 1.0) < 0.1


@pytest.mark.parametrize("name,content,problem", [
    ("missing.mp4", None, "not found"),
    ("junk.mp4", b"\x00garbage" * 100, "cannot be read"),
    ("empty.mp4", b"", "empty"),
])
def test_probe_errors_name_the_file(tmp_path: Path, name: str, content: bytes | None, problem: str) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ReenactError) as info:
        probe(path)
    assert problem in str(info.value) and str(path) in str(info.value)


def test_probe_rejects_audio_only_and_images(tmp_path: Path) -> None:
    wav = tmp_path / "a.wav"
    with av.open(str(wav), "w") as out:
        s = out.add_stream("pcm_s16le", rate=8000, layout="mono")
        f = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        f.sample_rate, f.pts = 8000, 0
        for p in s.encode(f):
            out.mux(p)
        for p in s.encode():
            out.mux(p)
    with pytest.raises(ReenactError, match="audio-only"):
        probe(wav)
    import cv2

    png = tmp_path / "still.png"
    cv2.imwrite(str(png), pattern_frame(0, 32, 32))
    with pytest.raises(ReenactError, match="still image"):
        probe(png)


def test_probe_rejects_video_without_frames(tmp_path: Path) -> None:
    # A Matroska file cut just before its first cluster: a video stream header, no frames.
    full = write_video(tmp_path / "full.mkv", n=10, fmt="matroska").read_bytes()
    path = tmp_path / "noframes.mkv"
    path.write_bytes(full[: full.index(b"\x1f\x43\xb6\x75")])
    with pytest.raises(ReenactError, match="no frames"):
        probe(path)
