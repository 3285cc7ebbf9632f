"""Damaged media, interruptions and silence (issue 15): each case with a crafted file made here.

The fuzz test runs a few seeded byte flips of a real MP4 through verify, animate's decoder and
`evaluate face`; benchmarks/fuzz.py runs 200 per entry point (docs/benchmarks.md)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from conftest import REPO, StillBackend
from reenact.cli import app
from reenact.errors import ReenactError

sys.path.insert(0, str(REPO / "benchmarks"))
import fuzz  # noqa: E402

runner = CliRunner()


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    """The first second of examples/driver.mp4 (packets copied: H.264 + AAC, moov first)."""
    return fuzz.cut_clip(REPO / "examples" / "driver.mp4", tmp_path_factory.mktemp("clip") / "clip.mp4", 1.0)


def _no_traceback(result, codes=(2,)) -> None:
    assert result.exit_code in codes, (result.exit_code, result.output, result.exception)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output


# ------------------------------------------------------------------ verify exit codes, damaged headers

def test_unknown_codec_is_one_line_everywhere(tmp_path: Path, clip: Path, example_portrait: Path):
    """A flipped codec id in the header (FFmpeg then has no decoder: codec_context is None)."""
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(clip.read_bytes().replace(b"avc1", b"xxxx"))
    from reenact.media.video import probe

    with pytest.raises(ReenactError, match="codec"):
        probe(bad)
    result = runner.invoke(app, ["verify", str(bad)])
    _no_traceback(result)  # could not read: 2, not "not marked" (1)
    assert "could not be read" in result.output
    result = runner.invoke(app, ["animate", str(example_portrait), str(bad), "-o", str(tmp_path / "o.mp4")])
    _no_traceback(result)
    result = runner.invoke(app, ["evaluate", "face", str(bad), "--source", str(example_portrait), "--driver",
                                 str(clip)])
    _no_traceback(result)


def test_verify_exit_codes(tmp_path: Path, clip: Path):
    from reenact.provenance.mark import mark_file

    assert runner.invoke(app, ["verify", str(clip)]).exit_code == 1  # read fully, no mark
    marked = tmp_path / "marked.mp4"
    mark_file(clip, marked)
    assert runner.invoke(app, ["verify", str(marked)]).exit_code == 0
    (tmp_path / "notes.mp4").write_text("not a video")
    _no_traceback(runner.invoke(app, ["verify", str(tmp_path / "notes.mp4")]))
    _no_traceback(runner.invoke(app, ["verify", str(tmp_path / "missing.mp4")]))


# ------------------------------------------------------------------ fuzz

@pytest.mark.parametrize("entry, count", [("decode", 8), ("verify", 2), ("evaluate", 2)])
def test_fuzz_quick(tmp_path: Path, clip: Path, entry: str, count: int):
    result = fuzz.fuzz(entry, clip, count, seed=0, folder=tmp_path, timeout=300)
    assert result["traceback"] == 0 and result["hang"] == 0, result["failures"]


@pytest.mark.slow
@pytest.mark.parametrize("entry", fuzz.ENTRIES)
def test_fuzz_more(tmp_path: Path, clip: Path, entry: str):
    result = fuzz.fuzz(entry, clip, 24, seed=1, folder=tmp_path, timeout=300)
    assert result["traceback"] == 0 and result["hang"] == 0, result["failures"]


def test_mutations_hit_header_and_payload(clip: Path):
    data = clip.read_bytes()
    spans = fuzz.header_spans(data)
    header_end = max(b for a, b in spans if a < 4096)
    for where in ("header", "payload"):
        out = fuzz.mutate(data, np.random.default_rng(3), where)
        changed = np.flatnonzero(np.frombuffer(out, np.uint8) != np.frombuffer(data, np.uint8))
        assert 1 <= len(changed) <= 8
        assert (changed < header_end).all() if where == "header" else (changed >= header_end).all()


# ------------------------------------------------------------------ damaged drivers

def _cut(clip_src: Path, path: Path, fraction: float) -> Path:
    data = clip_src.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    return path


def test_cut_driver_warns_with_frame_counts(tmp_path: Path, example_portrait: Path, caplog):
    import logging

    from reenact.pipeline import AnimateConfig, animate

    three = fuzz.cut_clip(REPO / "examples" / "driver.mp4", tmp_path / "three.mp4", 3.0)  # 75 frames, faststart
    cut = _cut(three, tmp_path / "cut.mp4", 0.3)
    with caplog.at_level(logging.WARNING):
        result = animate(example_portrait, cut, tmp_path / "o.mp4", AnimateConfig(), backend=StillBackend())
    assert result.frames < 40 and result.driver_frames_expected == 75
    assert result.warnings and f"only {result.frames} of the 75 frames" in result.warnings[0]
    assert any(f"{result.frames} of the 75" in r.getMessage() for r in caplog.records)
    # the whole file: no warning
    result = animate(example_portrait, three, tmp_path / "p.mp4", AnimateConfig(), backend=StillBackend())
    assert result.warnings == [] and result.frames == 75


def test_cut_driver_warning_is_one_line_on_the_cli(tmp_path: Path, example_portrait: Path):
    three = fuzz.cut_clip(REPO / "examples" / "driver.mp4", tmp_path / "three.mp4", 3.0)
    cut = _cut(three, tmp_path / "cut.mp4", 0.3)
    result = runner.invoke(app, ["animate", str(example_portrait), str(cut), "-o", str(tmp_path / "o.mp4")])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if "of the 75 frames" in line]
    assert len(lines) == 1 and "cut.mp4" in lines[0] and "could be decoded" in lines[0], result.output


# ------------------------------------------------------------------ make: video and report together

@pytest.fixture
def portrait_subject(tmp_path: Path, example_portrait: Path) -> Path:
    from reenact.subject import create_subject

    consent = tmp_path / "consent.txt"
    consent.write_text("I agree.\n")
    root = tmp_path / "subjects"
    create_subject("dana", example_portrait, consent, root=root)
    return root


def test_make_interrupted_in_measures_changes_neither_file(tmp_path: Path, clip: Path, portrait_subject: Path,
                                                           monkeypatch):
    import reenact.evaluate.face as face_module
    from reenact.pipeline import MakeConfig, make

    out = tmp_path / "out.mp4"
    out.write_bytes(b"previous video")
    out.with_suffix(".json").write_text('{"previous": true}')

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(face_module, "evaluate_face", interrupted)
    with pytest.raises(KeyboardInterrupt):
        make("dana", clip, out, MakeConfig(), subjects_dir=portrait_subject)
    assert out.read_bytes() == b"previous video"
    assert out.with_suffix(".json").read_text() == '{"previous": true}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["consent.txt", "out.json", "out.mp4", "subjects"]
    monkeypatch.undo()
    report = make("dana", clip, out, MakeConfig(measure=False), subjects_dir=portrait_subject)  # both replaced
    assert json.loads(out.with_suffix(".json").read_text())["watermark_payload"] == report["watermark_payload"]
    assert report["video"]["driver_frames_in_container"] == 25 and report["warnings"] == []
    verified = runner.invoke(app, ["verify", str(out), "--json"])
    assert json.loads(verified.output)["payload"] == report["watermark_payload"]


def test_make_records_a_short_driver_in_the_report(tmp_path: Path, portrait_subject: Path):
    from reenact.pipeline import MakeConfig, make

    three = fuzz.cut_clip(REPO / "examples" / "driver.mp4", tmp_path / "three.mp4", 3.0)
    cut = _cut(three, tmp_path / "cut.mp4", 0.3)
    report = make("dana", cut, tmp_path / "out.mp4", MakeConfig(measure=False), subjects_dir=portrait_subject)
    saved = json.loads((tmp_path / "out.json").read_text())
    assert saved["video"]["driver_frames_in_container"] == 75
    assert saved["video"]["driver_frames_decoded"] == report["video"]["frames"] < 40
    assert "of the 75 frames" in saved["warnings"][0]


# ------------------------------------------------------------------ SIGTERM and stale partial files

def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_partials_of_dead_processes_are_cleared(tmp_path: Path, clip: Path, example_portrait: Path):
    from reenact.pipeline import AnimateConfig, animate

    dead, alive = _dead_pid(), os.getppid()
    stale = [tmp_path / f".out.{dead}.unsigned.mp4", tmp_path / f".out.{dead}.partial.mp4",
             tmp_path / f"..out.{dead}.partial.{dead}.unsigned.mp4", tmp_path / f".out.mp4.{dead}.partial"]
    kept = [tmp_path / f".out.{alive}.partial.mp4", tmp_path / f".other.{dead}.partial.mp4",
            tmp_path / f".out.{dead}.notes.txt"]
    for p in stale + kept:
        p.write_bytes(b"x")
    animate(example_portrait, clip, tmp_path / "out.mp4", AnimateConfig(), backend=StillBackend())
    assert not any(p.exists() for p in stale)
    assert all(p.exists() for p in kept)


def test_sigterm_mid_render_leaves_nothing(tmp_path: Path, example_portrait: Path):
    driver = fuzz.cut_clip(REPO / "examples" / "driver.mp4", tmp_path / "driver.mp4", 6.0)
    out = tmp_path / "out.mp4"
    import reenact

    src = str(Path(reenact.__file__).resolve().parents[1])  # the reenact under test, also in the child
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-m", "reenact.cli", "animate", str(example_portrait), str(driver),
                             "-o", str(out)], env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not list(tmp_path.glob(".out.*")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)  # rendering has started once the unsigned file appears
    if proc.poll() is not None:
        pytest.skip("the render ended before it could be interrupted")
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr
    assert "terminated; no output written" in stderr and "Traceback" not in stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["driver.mp4"]


# ------------------------------------------------------------------ silence is not speech

def test_voice_train_refuses_digital_silence(tmp_path: Path):
    data = tmp_path / "data"
    data.mkdir()
    for i in range(3):
        sf.write(data / f"s{i}.wav", np.zeros(30 * 16000, np.float32), 16000)  # 90 s of digital silence
    result = runner.invoke(app, ["voice", "train", str(data), "-o", str(tmp_path / "v.safetensors"),
                                 "--workers", "1"])
    assert result.exit_code == 2, result.output
    assert "0.00 min of voiced speech in 1.50 min of audio" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "v.safetensors").exists()


def test_subject_create_refuses_silent_speech(tmp_path: Path, example_portrait: Path):
    speech = tmp_path / "silence.wav"
    sf.write(speech, np.zeros(60 * 16000, np.float32), 16000)
    consent = tmp_path / "consent.txt"
    consent.write_text("I agree.\n")
    root = tmp_path / "subjects"
    result = runner.invoke(app, ["subject", "create", "quiet", "--portrait", str(example_portrait), "--speech",
                                 str(speech), "--consent", str(consent), "--subjects-dir", str(root)])
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "no speech found" in errors[0] and "1.0 min read" in errors[0], result.output
    assert "voice prepare first" not in result.output
    assert not (root / ".quiet.partial").exists() and not (root / "quiet").exists()
