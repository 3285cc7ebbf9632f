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
after an interruption resumes from the finished steps. ``.NAME.partial/inputs.json``
describes the inputs of the call that made it (paths, sizes, modification times,
signer, scope, face index); a call with other inputs starts afresh.
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
from reenact.files import copy_file, sha256_file, write_text
from reenact.media.image import load_image
from reenact.voice.base import detect_backend, model_files
from reenact.voice.dataset import find_inputs, prepare_dataset

log = logging.getLogger(__name__)

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
DEFAULT_SCOPE = ("research: synthetic talking-head videos of the subject for perception studies and "
                 "deepfake-detector training, disclosed as AI-generated")


def subjects_root() -> Path:
    if os.environ.get("REENACT_SUBJECTS"):
        return Path(os.environ["REENACT_SUBJECTS"])
    base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "reenact" / "subjects"


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
    face_index: int = 0  # which face of the portrait (0 = largest)

    @property
    def portrait_path(self) -> Path:
        return self.folder / self.portrait

    @property
    def voice_model_path(self) -> Path | None:
        return self.folder / self.voice_model if self.voice_model else None

    def check_consent(self) -> None:
        """Raise when the consent document copy is missing or differs from the consent record."""
        document = self.folder / self.consent.document
        if not document.is_file():
            raise ReenactError("consent document missing: the subject cannot be used without it; recreate the "
                               "subject with its signed consent", document)
        if sha256_file(document) != self.consent.sha256:
            raise ReenactError("consent document changed since the subject was created (its sha256 differs from "
                               "the consent record); recreate the subject with its signed consent", document)

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


def partial_folder(name: str, root: Path | None = None) -> Path:
    """Where `create_subject` builds the subject until it is complete."""
    return (root or subjects_root()) / f".{check_name(name)}.partial"


def delete_subject(name: str, root: Path | None = None) -> Path:
    """Remove the subject folder and any unfinished `.NAME.partial` folder; return the path removed."""
    folder, partial = subject_folder(name, root), partial_folder(name, root)
    if not folder.exists() and not partial.exists():
        raise ReenactError(f"no subject named {name!r}")
    if partial.exists():
        shutil.rmtree(partial)
        log.info("removed the unfinished subject folder %s", partial)
    if not folder.exists():
        return partial
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
    face_index: int = 0,
) -> Subject:
    """Make a subject folder (resumable; nothing appears under NAME until it is complete).

    `voice_model`: an already trained voice model (a world .safetensors file, or a so-vits-svc folder with
    config.json + G_*.pth) to use instead of training one; it is copied into the subject.
    `face_index`: which face of the portrait is the subject (0 = largest).
    Every input is checked before any work; an unfinished run is resumed only when its inputs are the same."""
    from reenact.face.detect import FaceDetector, choose_face

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
    speech_files = _check_speech(speech)
    if voice_model is not None:
        _check_voice_model(Path(voice_model))
    stamp = _input_stamp(portrait, consent, speech, speech_files, voice_model, signer, scope, face_index,
                         train_config)
    root.mkdir(parents=True, exist_ok=True)
    partial = partial_folder(name, root)
    stamp_path = partial / "inputs.json"
    if partial.exists() and _read_stamp(stamp_path) != stamp:
        log.info("%s: left by a run with other inputs (or unknown ones); started afresh", partial)
        shutil.rmtree(partial)
    elif partial.exists():
        log.info("%s: resuming an unfinished run with the same inputs", partial)
    partial.mkdir(exist_ok=True)
    if not stamp_path.exists():
        write_text(stamp_path, json.dumps(stamp, indent=2))

    # 1. Portrait and its face.
    say("portrait")
    kept_portrait = partial / f"portrait{portrait.suffix.lower()}"
    if not kept_portrait.exists():
        faces = FaceDetector().detect(image, upsample=1)
        face = choose_face(faces, face_index, portrait)
        (partial / "face.json").write_text(json.dumps(
            {"box": face.box.tolist(), "landmarks": face.landmarks.tolist(), "faces_found": len(faces)}))
        copy_file(portrait, kept_portrait)

    # 2. Consent record.
    say("consent")
    kept_consent = partial / f"consent{consent.suffix.lower()}"
    if not kept_consent.exists():
        copy_file(consent, kept_consent)
    record = Consent(document=kept_consent.name, sha256=sha256_file(kept_consent),
                     signer=signer or name, date=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), scope=scope)

    # 3-4. Voice: prepare the speech, train the model (or take the one given).
    given_model, voice_model = voice_model, None
    voice_dataset = None
    summary: dict = {}
    if speech:
        from reenact.voice.world.model import train_voice

        dataset = partial / "voice" / "dataset"
        model = partial / "voice" / "model.safetensors"
        dataset.mkdir(parents=True, exist_ok=True)
        try:  # speech that cannot make a voice is refused, and leaves no unfinished folder to resume
            if not (partial / "voice" / "dataset" / "manifest.json").exists() or not model.exists():
                say("voice prepare")
                prepared = prepare_dataset([Path(p) for p in speech], dataset)
                if prepared.clips == 0:
                    drops = ", ".join(f"{n} {why}" for why, n in sorted(prepared.dropped.items())) or "none"
                    raise ReenactError(f"no speech found in the speech inputs: 0 clips kept of "
                                       f"{prepared.minutes_read:.1f} min read (dropped: {drops}); give recordings "
                                       "of the subject speaking", Path(speech[0]))
                prepared = asdict(prepared)
                summary["prepare"] = _relative_paths(prepared, partial)  # the partial folder is renamed below
            if given_model is None and not model.exists():
                say("voice train")
                train_voice(dataset, model, train_config)
        except ReenactError:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        voice_model, voice_dataset = "voice/model.safetensors", "voice/dataset"
    if given_model is not None:
        say("voice model")
        voice_model = _copy_voice_model(Path(given_model), partial / "voice")

    subject = Subject(name=name, folder=folder, portrait=kept_portrait.name, consent=record,
                      voice_model=voice_model, voice_dataset=voice_dataset,
                      created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), voice_summary=summary,
                      face_index=face_index)
    data = subject.to_json()
    data.pop("folder")
    (partial / "subject.json").write_text(json.dumps(data, indent=2))
    stamp_path.unlink()  # only the unfinished folder needs it
    os.replace(partial, folder)
    say("done")
    return subject


def _check_speech(speech: list[Path] | None) -> list[Path]:
    """The speech files the inputs name (files, and media files under folders); raise when one is missing."""
    if not speech:
        return []
    for p in map(Path, speech):
        if not p.exists():
            raise ReenactError("speech input not found: give existing audio/video files or folders", p)
    files = find_inputs([Path(p) for p in speech])
    if not files:
        raise ReenactError("no audio or video files found in the speech inputs", Path(speech[0]))
    return files


def _check_voice_model(src: Path) -> None:
    """Raise when a given voice model does not exist or is not one (before any work is done)."""
    if not src.exists():
        raise ReenactError("voice model not found: give a trained voice model, or leave it out to train one", src)
    model_files(src)


def _file_stamp(path: Path) -> dict:
    st = path.stat()
    return {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _input_stamp(portrait: Path, consent: Path, speech: list[Path] | None, speech_files: list[Path],
                 voice_model: Path | None, signer: str | None, scope: str, face_index: int,
                 train_config) -> dict:
    """What a create_subject call was given: an unfinished folder is resumed only for the same stamp."""
    return {
        "portrait": _file_stamp(portrait),
        "consent": _file_stamp(consent),
        "speech": [str(Path(p).resolve()) for p in speech or []],
        "speech_files": [_file_stamp(p) for p in speech_files],
        "voice_model": str(Path(voice_model).expanduser().resolve()) if voice_model is not None else None,
        "signer": signer,
        "scope": scope,
        "face_index": face_index,
        "train_config": (json.loads(json.dumps(asdict(train_config), default=str))
                         if hasattr(train_config, "__dataclass_fields__") else None),
    }


def _read_stamp(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _relative_paths(value: object, folder: Path) -> object:
    """`value` with every string naming a path under `folder` made relative to it (for JSON summaries)."""
    if isinstance(value, dict):
        return {k: _relative_paths(v, folder) for k, v in value.items()}
    if isinstance(value, list):
        return [_relative_paths(v, folder) for v in value]
    if isinstance(value, str):
        for base in (str(folder.resolve()), str(folder)):
            if value == base:
                return "."
            value = value.replace(base + os.sep, "")  # also paths inside messages
    return value


def _copy_voice_model(src: Path, voice_dir: Path) -> str:
    """Copy a trained voice model into the subject; return its path relative to the subject folder."""
    files = model_files(src)
    voice_dir.mkdir(parents=True, exist_ok=True)
    if len(files) == 1 and src.is_file():  # one file: voice/model.<suffix>
        kept = voice_dir / ("model" + src.suffix)
        copy_file(src, kept)
        return f"voice/{kept.name}"
    folder = voice_dir / detect_backend(src)  # several: voice/<backend>/ in the model's own layout
    folder.mkdir(exist_ok=True)
    for name, path in files.items():
        copy_file(path, folder / name)
    return f"voice/{folder.name}"
