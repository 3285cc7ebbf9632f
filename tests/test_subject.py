"""Subjects need consent; creation is resumable; `reenact make` writes a marked MP4 and a JSON report."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import shared
from typer.testing import CliRunner

from reenact.cli import app
from reenact.errors import ReenactError
from reenact.files import sha256_file
from reenact.subject import create_subject, delete_subject, list_subjects, load_subject

runner = CliRunner()


@pytest.fixture
def consent(tmp_path: Path) -> Path:
    path = tmp_path / "consent.txt"
    path.write_text("I consent to synthetic videos of me for research, disclosed as AI-generated.\n")
    return path


def test_no_subject_without_consent(tmp_path: Path, example_portrait: Path) -> None:
    root = tmp_path / "subjects"
    with pytest.raises(ReenactError, match="consent"):
        create_subject("bob", example_portrait, tmp_path / "missing.pdf", root=root)
    result = runner.invoke(app, ["subject", "create", "bob", "--portrait", str(example_portrait), "--speech",
                                 str(tmp_path), "--consent", str(tmp_path / "missing.pdf"),
                                 "--subjects-dir", str(root)])
    assert result.exit_code == 2 and "consent" in result.output
    assert list_subjects(root) == []


def test_subject_without_face_is_refused(tmp_path: Path, consent: Path) -> None:
    import cv2
    import numpy as np

    wall = tmp_path / "wall.png"
    cv2.imwrite(str(wall), np.full((100, 100, 3), 128, np.uint8))
    with pytest.raises(ReenactError, match="no face"):
        create_subject("wall", wall, consent, root=tmp_path / "subjects")
    assert not (tmp_path / "subjects" / "wall").exists()


def test_portrait_only_subject_and_resume(tmp_path: Path, example_portrait: Path, consent: Path) -> None:
    root = tmp_path / "subjects"
    # An interrupted run leaves only the hidden partial folder; the next run finishes it.
    (root / ".carol.partial").mkdir(parents=True)
    subject = create_subject("carol", example_portrait, consent, root=root, signer="Carol C.")
    assert not (root / ".carol.partial").exists()
    loaded = load_subject("carol", root)
    assert loaded.consent.signer == "Carol C." and len(loaded.consent.sha256) == 64
    assert loaded.portrait_path.read_bytes() == example_portrait.read_bytes()
    assert json.loads((root / "carol" / "face.json").read_text())["landmarks"]
    with pytest.raises(ReenactError, match="exists"):
        create_subject("carol", example_portrait, consent, root=root)
    assert subject.consent.record_sha256() == loaded.consent.record_sha256()


class Interrupted(Exception):
    pass


def stop_at(where: str):
    """A `step` callback that interrupts create_subject when it reaches step `where`."""
    def step(message: str) -> None:
        if message == where:
            raise Interrupted(message)
    return step


@pytest.fixture
def fake_model(tmp_path: Path) -> Path:
    """A 'trained' world voice model: create_subject only copies it."""
    path = tmp_path / "given.safetensors"
    path.write_bytes(b"not really weights")
    return path


@pytest.fixture
def fake_voice(monkeypatch: pytest.MonkeyPatch) -> list:
    """Replace speech preparation and training by quick fakes; the list holds the inputs of each prepare call."""
    import reenact.voice.dataset as dataset_module
    import reenact.voice.world.model as world_module

    calls: list = []

    def prepare(inputs: list[Path], out_dir: Path, config=None):
        calls.append([p.name for p in inputs])
        seen = out_dir / "inputs.txt"
        names = (seen.read_text().split() if seen.exists() else []) + [p.name for p in inputs]
        seen.write_text("\n".join(names))
        (out_dir / "manifest.json").write_text("{}")
        return dataset_module.PrepareSummary(str(out_dir), clips=1, warnings=[f"{out_dir / 'c.flac'}: quiet"])

    def train(dataset: Path, model: Path, config=None) -> None:
        model.write_bytes(b"weights")

    monkeypatch.setattr(dataset_module, "prepare_dataset", prepare)
    monkeypatch.setattr(world_module, "train_voice", train)
    return calls


def test_resume_with_other_inputs_starts_afresh(tmp_path: Path, example_portrait: Path, consent: Path,
                                                fake_model: Path) -> None:
    import cv2

    root = tmp_path / "subjects"
    with pytest.raises(Interrupted):
        create_subject("s3", example_portrait, consent, root=root, voice_model=fake_model, step=stop_at("voice model"))
    partial = root / ".s3.partial"
    assert (partial / "inputs.json").exists() and (partial / "consent.txt").exists()
    (partial / "voice" / "dataset").mkdir(parents=True)
    (partial / "voice" / "dataset" / "manifest.json").write_text("{}")  # as if speech had been given before
    portrait2 = tmp_path / "other.jpg"
    cv2.imwrite(str(portrait2), cv2.imread(str(example_portrait)))
    consent2 = tmp_path / "consent2.md"
    consent2.write_text("Signed again, with a wider scope.\n")
    subject = create_subject("s3", portrait2, consent2, root=root, signer="S. Three")
    folder = root / "s3"
    assert not partial.exists()
    assert sorted(p.name for p in folder.iterdir()) == ["consent.md", "face.json", "portrait.jpg", "subject.json"]
    assert (folder / "consent.md").read_bytes() == consent2.read_bytes()
    assert subject.consent.sha256 == sha256_file(consent2) and subject.voice_model is None
    load_subject("s3", root).check_consent()


def test_resume_with_same_inputs_keeps_finished_steps(tmp_path: Path, example_portrait: Path, consent: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from reenact.face.detect import FaceDetector

    root = tmp_path / "subjects"
    with pytest.raises(Interrupted):
        create_subject("s4", example_portrait, consent, root=root, step=stop_at("consent"))
    assert (root / ".s4.partial" / "face.json").exists()

    def detect_again(*args, **kwargs):
        raise AssertionError("the finished portrait step ran again")

    monkeypatch.setattr(FaceDetector, "detect", detect_again)
    subject = create_subject("s4", example_portrait, consent, root=root)
    assert subject.portrait_path.read_bytes() == example_portrait.read_bytes()
    assert not (root / ".s4.partial").exists() and not (root / "s4" / "inputs.json").exists()


def test_inputs_are_checked_before_any_work(tmp_path: Path, example_portrait: Path, consent: Path) -> None:
    root = tmp_path / "subjects"
    not_a_model = tmp_path / "model.bin"
    not_a_model.write_bytes(b"x")
    empty_sovits = tmp_path / "sovits"
    empty_sovits.mkdir()
    cases = [({"voice_model": tmp_path / "missing.safetensors"}, "voice model not found"),
             ({"voice_model": not_a_model}, "not a voice model"),
             ({"voice_model": empty_sovits}, "G_"),
             ({"speech": [tmp_path / "missing.wav"]}, "speech input not found"),
             ({"speech": [empty_sovits]}, "no audio or video files")]
    for kwargs, message in cases:
        with pytest.raises(ReenactError, match=message):
            create_subject("s5", example_portrait, consent, root=root, **kwargs)
        assert not (root / ".s5.partial").exists(), kwargs


def test_delete_removes_unfinished_subject(tmp_path: Path, example_portrait: Path, consent: Path) -> None:
    root = tmp_path / "subjects"
    with pytest.raises(Interrupted):
        create_subject("s6", example_portrait, consent, root=root, step=stop_at("consent"))
    result = runner.invoke(app, ["subject", "delete", "s6", "--yes", "--subjects-dir", str(root)])
    assert result.exit_code == 0 and ".s6.partial" in result.output.replace("\n", "")  # "deleted PATH", wrapped
    assert not (root / ".s6.partial").exists()
    with pytest.raises(ReenactError, match="no subject named"):
        delete_subject("s6", root)
    with pytest.raises(Interrupted):
        create_subject("s6", example_portrait, consent, root=root, step=stop_at("consent"))
    create_subject("s6b", example_portrait, consent, root=root)
    (root / ".s6b.partial").mkdir()  # a later failed attempt beside the finished subject: both go
    assert delete_subject("s6b", root) == root / "s6b"
    assert not (root / "s6b").exists() and not (root / ".s6b.partial").exists()
    assert (root / ".s6.partial").exists()


def test_voice_summary_paths_are_relative_and_speech_is_not_stale(
        tmp_path: Path, example_portrait: Path, consent: Path, fake_voice: list) -> None:
    root = tmp_path / "subjects"
    old, new = tmp_path / "old.wav", tmp_path / "new.wav"
    old.write_bytes(b"RIFF")
    new.write_bytes(b"RIFF")
    with pytest.raises(Interrupted):
        create_subject("s7", example_portrait, consent, [old], root=root, step=stop_at("voice train"))
    subject = create_subject("s7", example_portrait, consent, [new], root=root)
    assert fake_voice == [["old.wav"], ["new.wav"]]
    assert (root / "s7" / "voice" / "dataset" / "inputs.txt").read_text() == "new.wav"
    for summary in (subject.voice_summary, load_subject("s7", root).voice_summary):
        assert summary["prepare"]["out_dir"] == "voice/dataset"
        assert summary["prepare"]["warnings"] == ["voice/dataset/c.flac: quiet"]
    assert ".partial" not in (root / "s7" / "subject.json").read_text()
    assert subject.voice_model_path.read_bytes() == b"weights"


def test_check_consent(tmp_path: Path, example_portrait: Path, consent: Path) -> None:
    root = tmp_path / "subjects"
    create_subject("s8", example_portrait, consent, root=root)
    subject = load_subject("s8", root)
    subject.check_consent()
    copy = root / "s8" / "consent.txt"
    copy.write_text("I consent to nothing.\n")
    with pytest.raises(ReenactError, match="consent document changed") as changed:
        subject.check_consent()
    assert changed.value.path == copy
    copy.unlink()
    with pytest.raises(ReenactError, match="consent document missing") as missing:
        subject.check_consent()
    assert missing.value.path == copy


def test_face_index(tmp_path: Path, example_portrait: Path, consent: Path) -> None:
    import cv2
    import numpy as np

    root = tmp_path / "subjects"
    image = cv2.imread(str(example_portrait))
    h, w = image.shape[:2]
    pair = tmp_path / "pair.png"  # the portrait, and beside it a smaller copy: face 1
    canvas = np.full((h, 2 * w, 3), 128, np.uint8)
    canvas[:, :w] = image
    canvas[: h * 3 // 4, w: w + w * 3 // 4] = cv2.resize(image, (w * 3 // 4, h * 3 // 4))
    cv2.imwrite(str(pair), canvas)
    subject = create_subject("s9", pair, consent, root=root, face_index=1)
    assert subject.face_index == 1 and load_subject("s9", root).face_index == 1
    face = json.loads((root / "s9" / "face.json").read_text())
    assert face["faces_found"] == 2 and face["box"][0] >= w
    with pytest.raises(ReenactError, match="face-index 2"):
        create_subject("s10", pair, consent, root=root, face_index=2)
    # subject.json files written before face_index existed still load
    meta = root / "s9" / "subject.json"
    data = json.loads(meta.read_text())
    del data["face_index"]
    meta.write_text(json.dumps(data))
    assert load_subject("s9", root).face_index == 0


@pytest.mark.slow
def test_make_end_to_end(tmp_path: Path, example_portrait: Path, example_driver: Path, consent: Path) -> None:
    speech = tmp_path / "speech"
    speech.mkdir()
    for clip in sorted(shared("speech", "corpus", "slt_train").glob("*.flac"))[:45]:
        shutil.copy(clip, speech)
    root = tmp_path / "subjects"
    result = runner.invoke(app, ["subject", "create", "alice", "--portrait", str(example_portrait), "--speech",
                                 str(speech), "--consent", str(consent), "--subjects-dir", str(root)])
    assert result.exit_code == 0, result.output
    out = tmp_path / "out.mp4"
    result = runner.invoke(app, ["make", "--subject", "alice", "--driver", str(example_driver), "-o", str(out),
                                 "--subjects-dir", str(root)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["backends"] == {"motion": "landmark", "voice": "world"}
    assert report["subject"]["consent_record_sha256"] == load_subject("alice", root).consent.record_sha256()
    assert report["measures"]["face"]["identity"]["median"] < 0.6
    assert "cos_target" in report["measures"]["voice"]
    verified = runner.invoke(app, ["verify", str(out), "--json"])
    assert verified.exit_code == 0
    layers = json.loads(verified.output)
    assert json.dumps(layers).count(report["watermark_payload"]) >= 2


def test_make_checks_before_any_work(tmp_path: Path, example_portrait: Path, example_driver: Path,
                                     consent: Path, fake_model: Path, caplog) -> None:
    import logging

    from reenact.pipeline import MakeConfig, make

    root = tmp_path / "subjects"
    create_subject("s9", example_portrait, consent, root=root, voice_model=fake_model)
    for out, config, message in ((tmp_path / "a.mp4", MakeConfig(transpose="abc"), "--transpose"),
                                 (tmp_path / "a.txt", MakeConfig(), "must be a .mp4 file"),
                                 (example_driver, MakeConfig(), "overwrite the driver")):
        with pytest.raises(ReenactError, match=message):
            make("s9", example_driver, out, config, subjects_dir=root)
    (root / "s9" / "consent.txt").write_text("edited\n")
    with pytest.raises(ReenactError, match="consent document changed"):
        make("s9", example_driver, tmp_path / "a.mp4", MakeConfig(), subjects_dir=root)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["consent.txt", "given.safetensors", "subjects"]
    # a driver without an audio track: nothing to re-voice, said once, and a silent video
    create_subject("s10", example_portrait, consent, root=root, voice_model=fake_model)
    silent = tmp_path / "silent.mp4"
    import av

    with av.open(str(example_driver)) as src, av.open(str(silent), "w") as dst:
        stream = dst.add_stream_from_template(src.streams.video[0])
        for packet in src.demux(src.streams.video[0]):
            if packet.dts is not None:
                packet.stream = stream
                dst.mux(packet)
    with caplog.at_level(logging.WARNING):
        report = make("s10", silent, tmp_path / "b.mp4", MakeConfig(measure=False), subjects_dir=root)
    assert report["video"]["audio"] is False and report["backends"]["voice"] is None
    assert any("no audio track" in r.getMessage() for r in caplog.records)
