"""Subjects need consent; creation is resumable; `reenact make` writes a marked MP4 and a JSON report."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import shared
from reenact.cli import app
from reenact.errors import ReenactError
from reenact.subject import create_subject, list_subjects, load_subject

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
