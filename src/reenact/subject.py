"""Subjects: the person a video depicts, with their consent.

A subject is a folder under the subjects root (``$REENACT_SUBJECTS``, else
``$XDG_DATA_HOME/reenact/subjects``, else ``~/.local/share/reenact/subjects``):

    NAME/subject.json          what follows, plus the consent record
    NAME/portrait.<ext>        the portrait as given (copied, never changed)
    NAME/face.json             its face box and 68 landmarks
    NAME/consent.<ext>         the consent document as given (copied)
    NAME/voice/dataset/        the prepared speech (reenact voice prepare)
    NAME/voice/model.safetensors   the trained voice model

There is no subject without a consent record: the document's sha256, who
signed it, the date and the scope. Creation happens in ``.NAME.partial`` and
is renamed into place when every step is done; running the same command again
after an interruption resumes from the finished steps.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from reenact.errors import ReenactError

log = logging.getLogger(__name__)

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
DEFAULT_SCOPE = ("research: synthetic talking-head videos of the subject for perception studies and "
                 "deepfake-detector training, disclosed as AI-generated")


def subjects_root() -> Path:
    if os.environ.get("REENACT_SUBJECTS"):
        return Path(os.environ["REENACT_SUBJECTS"])
    base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "reenact" / "subjects"


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class Consent:
    """The consent record: which document, signed by whom, when, for what."""

    document: str  # file name inside the subject folder
    sha256: str
    signer: str
    date: str  # ISO 8601, UTC
    scope: str = DEFAULT_SCOPE

    def record_sha256(self) -> str:
        """Hash of the whole record (what the C2PA manifest of each output states)."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()


@dataclass
class Subject:
    """A subject profile, as stored in subject.json."""

    name: str
    folder: Path
    portrait: str
    consent: Consent
    voice_model: str | None = None  # relative path, None when no speech was given
    voice_dataset: str | None = None
    created: str = ""
    voice_summary: dict = field(default_factory=dict)

    @property
    def portrait_path(self) -> Path:
        return self.folder / self.portrait

    @property
    def voice_model_path(self) -> Path | None:
        return self.folder / self.voice_model if self.voice_model else None

    def to_json(self) -> dict:
        data = asdict(self)
        data["folder"] = str(self.folder)
        return data

    @classmethod
    def load(cls, folder: Path) -> "Subject":
        meta = folder / "subject.json"
        if not meta.exists():
            raise ReenactError("is not a subject folder (no subject.json)", folder)
        data = json.loads(meta.read_text())
        data["folder"] = folder
        data["consent"] = Consent(**data["consent"])
        return cls(**data)


def check_name(name: str) -> str:
    if not NAME_PATTERN.match(name):
        raise ReenactError(f"subject name {name!r} must be 1-64 letters, digits, '.', '_' or '-'")
    return name


def subject_folder(name: str, root: Path | None = None) -> Path:
    return (root or subjects_root()) / check_name(name)


def load_subject(name: str, root: Path | None = None) -> Subject:
    folder = subject_folder(name, root)
    if not folder.exists():
        known = ", ".join(s.name for s in list_subjects(root)) or "none yet"
        raise ReenactError(f"no subject named {name!r} (subjects: {known}); create one with `reenact subject create`")
    return Subject.load(folder)


def list_subjects(root: Path | None = None) -> list[Subject]:
    root = root or subjects_root()
    if not root.exists():
        return []
    return [Subject.load(p) for p in sorted(root.iterdir()) if p.is_dir() and (p / "subject.json").exists()]


def delete_subject(name: str, root: Path | None = None) -> Path:
    folder = subject_folder(name, root)
    if not folder.exists():
        raise ReenactError(f"no subject named {name!r}")
    shutil.rmtree(folder)
    return folder


StepFn = Callable[[str], None]


def create_subject(
    name: str,
    portrait: Path,
    consent: Path,
    speech: list[Path] | None = None,
    signer: str | None = None,
    scope: str = DEFAULT_SCOPE,
    root: Path | None = None,
    train_config=None,
    step: StepFn | None = None,
    voice_model: Path | None = None,
) -> Subject:
    """Make a subject folder (resumable; nothing appears under NAME until it is complete).

    `voice_model`: an already trained voice model (a world .safetensors file, or a so-vits-svc folder with
    config.json + G_*.pth) to use instead of training one; it is copied into the subject."""
    from reenact.face.detect import FaceDetector, choose_face
    from reenact.pipeline import load_image

    say = step or (lambda message: None)
    root = root or subjects_root()
    folder = subject_folder(name, root)
    if folder.exists():
        raise ReenactError(f"subject {name!r} exists already ({folder}); delete it first or choose another name")
    portrait, consent = Path(portrait), Path(consent)
    if not consent.is_file():
        raise ReenactError("consent document not found: a subject needs the person's signed consent", consent)
    if consent.stat().st_size == 0:
        raise ReenactError("consent document is empty", consent)
    image = load_image(portrait)  # checks the file is a readable image
    root.mkdir(parents=True, exist_ok=True)
    partial = root / f".{name}.partial"
    partial.mkdir(exist_ok=True)

    # 1. Portrait and its face.
    say("portrait")
    kept_portrait = partial / f"portrait{portrait.suffix.lower()}"
    if not kept_portrait.exists():
        faces = FaceDetector().detect(image, upsample=1)
        face = choose_face(faces, 0, portrait)
        (partial / "face.json").write_text(json.dumps(
            {"box": face.box.tolist(), "landmarks": face.landmarks.tolist(), "faces_found": len(faces)}))
        _copy_atomic(portrait, kept_portrait)

    # 2. Consent record.
    say("consent")
    kept_consent = partial / f"consent{consent.suffix.lower()}"
    if not kept_consent.exists():
        _copy_atomic(consent, kept_consent)
    record = Consent(document=kept_consent.name, sha256=sha256_file(kept_consent),
                     signer=signer or name, date=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), scope=scope)

    # 3-4. Voice: prepare the speech, train the model (or take the one given).
    given_model, voice_model = voice_model, None
    voice_dataset = None
    summary: dict = {}
    if speech:
        from reenact.voice.dataset import prepare_dataset
        from reenact.voice.world import train_voice

        dataset = partial / "voice" / "dataset"
        model = partial / "voice" / "model.safetensors"
        dataset.mkdir(parents=True, exist_ok=True)
        if not (partial / "voice" / "dataset" / "manifest.json").exists() or not model.exists():
            say("voice prepare")
            prepared = prepare_dataset([Path(p) for p in speech], dataset)
            summary["prepare"] = asdict(prepared) if hasattr(prepared, "__dataclass_fields__") else str(prepared)
        if given_model is None and not model.exists():
            say("voice train")
            train_voice(dataset, model, train_config)
        voice_model, voice_dataset = "voice/model.safetensors", "voice/dataset"
    if given_model is not None:
        voice_model = _copy_voice_model(Path(given_model), partial / "voice")

    subject = Subject(name=name, folder=folder, portrait=kept_portrait.name, consent=record,
                      voice_model=voice_model, voice_dataset=voice_dataset,
                      created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), voice_summary=summary)
    data = subject.to_json()
    data.pop("folder")
    (partial / "subject.json").write_text(json.dumps(data, indent=2))
    os.replace(partial, folder)
    say("done")
    return subject


def _copy_voice_model(src: Path, voice_dir: Path) -> str:
    """Copy a trained voice model into the subject; return its path relative to the subject folder."""
    from reenact.voice.convert import detect_backend

    if not src.exists():
        raise ReenactError("voice model not found", src)
    voice_dir.mkdir(parents=True, exist_ok=True)
    if detect_backend(src) == "world":
        _copy_atomic(src, voice_dir / "model.safetensors")
        return "voice/model.safetensors"
    from reenact.voice.sovits_infer import find_generator

    generator, config = find_generator(src)
    (voice_dir / "sovits").mkdir(exist_ok=True)
    _copy_atomic(config, voice_dir / "sovits" / "config.json")
    _copy_atomic(generator, voice_dir / "sovits" / generator.name)
    return "voice/sovits"


def _copy_atomic(src: Path, dst: Path) -> None:
    tmp = dst.with_name(f".{dst.name}.partial")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)
