"""The "Must reach" table of issue 5: each mark after each attack, no false positives, a flipped byte.

Marked test video: 5 s of examples/driver.mp4 scaled to 512x512 (a typical output
size), with its speech, marked by `mark_file` (label, both watermarks, tags,
signed manifest). Attacks use the ffmpeg CLI as a user would.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from conftest import EXAMPLES, SHARED, StillBackend, needs_ffmpeg, shared
from reenact.media.audio import Audio, read_audio
from reenact.provenance import audio_mark, video_mark
from reenact.provenance.manifest import read_manifest
from reenact.provenance.mark import mark_file
from reenact.provenance.payload import Payload
from reenact.provenance.verify import verify

def _benchmark(name: str):
    """A module of benchmarks/ (the tamper helpers are shared with benchmarks/provenance.py)."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


flip_byte_in_packet = _benchmark("provenance").flip_byte_in_packet

VIDEO_ATTACKS = {
    "h264_crf28": ["-c:v", "libx264", "-crf", "28"],
    "downscale_50": ["-vf", "scale=trunc(iw/4)*2:trunc(ih/4)*2", "-c:v", "libx264"],
    "crop_10_borders": ["-vf", "crop=trunc(iw*0.4)*2:trunc(ih*0.4)*2", "-c:v", "libx264"],
    "all_three": ["-vf", "crop=trunc(iw*0.4)*2:trunc(ih*0.4)*2,scale=trunc(iw/4)*2:trunc(ih/4)*2",
                  "-c:v", "libx264", "-crf", "28"],
}
AUDIO_ATTACKS = {
    "aac_128k": (["-c:a", "aac", "-b:a", "128k"], ".m4a"),
    "mp3_128k": (["-c:a", "libmp3lame", "-b:a", "128k"], ".mp3"),
    "resample_16k": (["-ar", "16000"], ".wav"),
}


def ffmpeg(src: Path, args: list[str], dst: Path) -> Path:
    subprocess.run([needs_ffmpeg(), "-y", "-v", "error", "-i", str(src), *args, str(dst)], check=True)
    return dst


@pytest.fixture(scope="module")
def config_home(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("XDG_CONFIG_HOME", str(tmp_path_factory.mktemp("config")))
    for name in ("REENACT_C2PA_DIR", "REENACT_C2PA_CERT", "REENACT_C2PA_KEY"):
        mp.delenv(name, raising=False)
    yield
    mp.undo()


@pytest.fixture(scope="module")
def marked(tmp_path_factory, config_home) -> tuple[Path, Payload]:
    folder = tmp_path_factory.mktemp("marked")
    src = ffmpeg(EXAMPLES / "driver.mp4", ["-t", "5", "-vf", "scale=512:512", "-c:v", "libx264", "-crf", "16",
                                           "-c:a", "aac", "-b:a", "160k"], folder / "driver512.mp4")
    payload = Payload.new()
    mark_file(src, folder / "marked.mp4", payload)
    return folder / "marked.mp4", payload


@pytest.mark.parametrize("attack", list(VIDEO_ATTACKS))
def test_video_watermark_survives(marked, attack: str, tmp_path: Path) -> None:
    path, payload = marked
    attacked = ffmpeg(path, ["-an", *VIDEO_ATTACKS[attack]], tmp_path / f"{attack}.mp4")
    result = video_mark.detect_frames(video_mark.sample_frames(attacked, max_frames=32))
    assert result.found and result.payload == payload, result.as_dict()


@pytest.mark.parametrize("attack", list(AUDIO_ATTACKS))
def test_audio_watermark_of_output_survives(marked, attack: str, tmp_path: Path) -> None:
    path, payload = marked
    args, ext = AUDIO_ATTACKS[attack]
    attacked = ffmpeg(path, ["-vn", *args], tmp_path / f"{attack}{ext}")
    assert audio_mark.detect_audio(attacked)[:2] == (True, payload)


def _speech_clips() -> list[tuple[str, Audio]]:
    clips = []
    for name in ("RD_Radio31_000.wav", "RD_Radio34_002.wav", "festival_kal_diphone.wav"):
        clips.append((name, read_audio(shared("speech", name))))
    corpus = sorted(shared("speech", "corpus", "kal_drive").glob("*.flac"))[:2]  # two sentences: over 5 s
    parts = [read_audio(p, sample_rate=16000, mono=True).samples for p in corpus]
    clips.append(("kal_drive 41_01+41_02", Audio(np.concatenate(parts, axis=1), 16000)))
    slt = sorted(shared("speech", "corpus", "slt_ref").glob("*.flac"))[:3]
    parts = [read_audio(p, mono=True).samples for p in slt]
    clips.append(("slt_ref 41_01-41_03 (32 kHz)", Audio(np.concatenate(parts, axis=1), read_audio(slt[0]).sample_rate)))
    return clips


def test_audio_watermark_on_speech_survives(tmp_path: Path) -> None:
    if not SHARED.exists():
        pytest.skip(f"needs the shared assets ({SHARED} is missing)")
    for name, clip in _speech_clips():
        assert clip.duration >= 5.0, name
        payload = Payload.new()
        marked = audio_mark.mark_audio(clip, payload)
        assert audio_mark.snr(clip, marked) >= 30.0, name
        wav = tmp_path / "marked.wav"
        sf.write(wav, marked.samples.T, marked.sample_rate)
        for attack, (args, ext) in AUDIO_ATTACKS.items():
            attacked = ffmpeg(wav, args, tmp_path / f"attacked{ext}")
            assert audio_mark.detect_audio(attacked)[:2] == (True, payload), (name, attack)


@pytest.mark.parametrize("kind", ["video", "audio"])
def test_flipped_byte_invalidates_manifest_but_not_watermarks(marked, kind: str, tmp_path: Path) -> None:
    """Whether the byte lands in a video or an audio packet, the manifest fails and both marks remain."""
    path, payload = marked
    assert read_manifest(path)["state"] == "valid"
    copy = tmp_path / "flipped.mp4"
    shutil.copyfile(path, copy)
    flip_byte_in_packet(copy, kind)
    report = verify(copy, max_frames=32)
    assert report["manifest"]["state"] == "invalid"
    assert any("mismatch" in str(f) for f in report["manifest"]["failures"]), report["manifest"]
    assert report["video_watermark"]["found"] and report["video_watermark"]["payload"] == payload.hex()
    assert report["audio_watermark"]["found"] and report["audio_watermark"]["payload"] == payload.hex()
    assert report["marked"]


def test_verify_marked_output_reports_every_layer(marked) -> None:
    path, payload = marked
    report = verify(path)
    assert report["marked"] and report["payload"] == payload.hex()
    assert report["manifest"]["state"] == "valid" and report["metadata"]["synthetic"] == "true"
    assert report["video_watermark"]["found"] and report["audio_watermark"]["found"]


DRIVERS = sorted((SHARED / "drivers").glob("*")) if (SHARED / "drivers").exists() else []


@pytest.mark.parametrize("driver", DRIVERS or [None], ids=[p.name for p in DRIVERS] or ["missing"])
def test_no_false_positive_on_shared_drivers(driver: Path | None) -> None:
    if driver is None:
        shared("drivers")
    report = verify(driver)
    assert not report["marked"], report
    assert not report["video_watermark"]["found"] and not report["audio_watermark"]["found"]


def test_no_false_positive_on_unmarked_pipeline_output(tmp_path: Path, monkeypatch) -> None:
    """An animate run with every marking step bypassed gives a file verify finds no mark in."""
    import reenact.pipeline as pipeline
    import reenact.provenance as provenance
    from reenact.pipeline import AnimateConfig, animate

    def copy(src, dst, *args, **kwargs):
        shutil.copyfile(src, dst)
        return Path(dst)

    bypass = {"mark_audio": lambda audio, *a, **k: audio, "draw_label": lambda frame, *a, **k: frame,
              "sign_mp4": copy}
    for module in (provenance, pipeline):
        for name, fn in bypass.items():
            monkeypatch.setattr(module, name, fn, raising=False)
    monkeypatch.setattr(video_mark.VideoMarker, "mark", lambda self, frame: frame)
    short = ffmpeg(EXAMPLES / "driver.mp4", ["-t", "2", "-c:v", "libx264", "-c:a", "aac"], tmp_path / "short.mp4")
    out = tmp_path / "out.mp4"
    animate(EXAMPLES / "portrait.png", short, out, AnimateConfig(reference="first"), backend=StillBackend())
    report = verify(out)
    assert not report["marked"], report
