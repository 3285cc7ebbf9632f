"""Subjects page: create one (portrait with its detected faces, speech, consent), look at each, delete one."""

from __future__ import annotations

import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import cv2
import gradio as gr
import numpy as np

from reenact.errors import ReenactError
from reenact.face.detect import FaceDetector, choose_face
from reenact.files import copy_file
from reenact.media.image import load_image
from reenact.subject import DEFAULT_SCOPE, create_subject, delete_subject, list_subjects, load_subject
from reenact.ui.jobs import forget_copies, publish, status

CREATE_STEPS = ("portrait", "consent", "voice prepare", "voice train", "voice model", "done")


@dataclass
class SubjectsPage:
    selected: gr.Dropdown
    changed: list  # events after which the list of subjects may differ
    refresh: object  # refresh(current) -> the dropdown's update


def subject_names(root: Path | None) -> list[str]:
    return [s.name for s in list_subjects(root)]


def build(ctx) -> SubjectsPage:
    root = ctx.subjects_dir
    with gr.Row():
        with gr.Column(scale=3):
            gr.Markdown("### New subject\nThere is no subject without the person's signed consent.")
            name = gr.Textbox(label="Name", placeholder="letters, digits, '.', '_' or '-'", elem_id="subject-name")
            with gr.Row():
                portrait = gr.File(label="Portrait image", file_types=["image"], elem_id="subject-portrait")
                faces = gr.Image(label="Faces found (the one used is green)", interactive=False, height=260,
                                 elem_id="subject-faces")
            face_index = gr.Number(label="Face index (0 = largest)", value=0, precision=0, minimum=0)
            speech = gr.File(label="Speech of the subject: audio or video files, about 20 minutes (at least 1) to "
                                   "train the voice; without speech, outputs keep the driver's voice",
                             file_count="multiple", file_types=["audio", "video"], elem_id="subject-speech")
            consent = gr.File(label="Signed consent document (any file: PDF, scan, recording)",
                              elem_id="subject-consent")
            signer = gr.Textbox(label="Signed by", placeholder="default: the subject's name", elem_id="subject-signer")
            scope = gr.Textbox(label="Scope of the consent", value=DEFAULT_SCOPE, lines=2)
            with gr.Accordion("Trained voice model instead of training one", open=False):
                voice_model = gr.File(label="A world model (.safetensors), or a so-vits-svc config.json and G_*.pth",
                                      file_count="multiple", file_types=[".safetensors", ".pth", ".json"])
            create = gr.Button("Create subject", variant="primary", elem_id="subject-create")
            create_status = gr.HTML(elem_id="subject-create-status")
        with gr.Column(scale=2):
            gr.Markdown("### Subjects")
            with gr.Row():
                selected = gr.Dropdown(label="Subject", choices=[], value=None, elem_id="subject-selected",
                                       allow_custom_value=False)
                refresh = gr.Button("Refresh", size="sm")
            shown_portrait = gr.Image(label="Portrait", interactive=False, height=260)
            record = gr.JSON(label="Profile and consent record")
            document = gr.File(label="Consent document", interactive=False)
            voice = gr.Markdown()
            with gr.Row():
                sure = gr.Checkbox(label="Delete this subject and all its files", value=False,
                                   elem_id="subject-delete-sure")
                delete = gr.Button("Delete", variant="stop", size="sm", elem_id="subject-delete")
            delete_status = gr.HTML(elem_id="subject-delete-status")

    def preview(path: str | None, index: float | None):
        if not path:
            return None, ""
        try:
            return faces_image(Path(path), int(index or 0)), ""
        except ReenactError as exc:
            return None, status(ctx.jobs.plain(str(exc)), ok=False)

    def on_create(name_, portrait_, face_index_, speech_, consent_, signer_, scope_, model_files,
                  progress=gr.Progress()):
        missing = [what for what, value in (("a name", (name_ or "").strip()), ("a portrait image", portrait_),
                                            ("the signed consent document", consent_)) if not value]
        if missing:
            return status(f"give {' and '.join(missing)}: a subject needs a portrait and the person's consent",
                          ok=False), gr.update()

        def step(message: str) -> None:
            progress((CREATE_STEPS.index(message) if message in CREATE_STEPS else 0, len(CREATE_STEPS) - 1),
                     desc=message)

        def work():
            model, scratch = _voice_model(model_files, ctx.config.work_dir)
            try:
                return create_subject(name_.strip(), Path(portrait_), Path(consent_),
                                      [Path(p) for p in speech_ or []] or None, signer=(signer_ or "").strip() or None,
                                      scope=(scope_ or "").strip() or DEFAULT_SCOPE, root=root, step=step,
                                      voice_model=model, face_index=int(face_index_ or 0))
            finally:
                if scratch is not None:
                    shutil.rmtree(scratch, ignore_errors=True)

        subject, error = ctx.jobs.run(work)
        if error:
            return status(error, ok=False), gr.update()
        voice_ = "with a voice model" if subject.voice_model else "no voice model: outputs keep the driver's voice"
        return (status(f"created subject {subject.name} ({voice_})"),
                gr.update(choices=subject_names(root), value=subject.name))

    def on_show(name_: str | None):
        if not name_:
            return None, None, None, ""
        try:
            subject = load_subject(name_, root)
        except ReenactError as exc:
            return None, None, None, status(str(exc), ok=False)
        work, document = ctx.config.work_dir, subject.folder / subject.consent.document
        shown = [publish(work, p) if p.is_file() else None for p in (subject.portrait_path, document)]
        return shown[0], subject.to_json(), shown[1], voice_summary(subject)

    def on_delete(name_: str | None, sure_: bool):
        if not name_:
            return status("choose a subject first", ok=False), gr.update(), False
        if not sure_:
            return status(f"tick the box to delete {name_} and all its files", ok=False), gr.update(), False
        def work():
            subject = load_subject(name_, root)
            copies = forget_copies(ctx.config.work_dir,
                                   [subject.portrait_path, subject.folder / subject.consent.document])
            return delete_subject(name_, root), copies

        done, error = ctx.jobs.run(work)
        if error:
            return status(error, ok=False), gr.update(), False
        removed, copies = done
        return (status(f"deleted {removed} and {copies} copies of its portrait and consent document kept by the page"),
                gr.update(choices=subject_names(root), value=None), False)

    portrait.change(preview, [portrait, face_index], [faces, create_status], concurrency_id="preview")
    face_index.change(preview, [portrait, face_index], [faces, create_status], concurrency_id="preview")
    created = create.click(on_create, [name, portrait, face_index, speech, consent, signer, scope, voice_model],
                           [create_status, selected], concurrency_id="job", concurrency_limit=1,
                           show_progress_on=[create_status])
    selected.change(on_show, [selected], [shown_portrait, record, document, voice], concurrency_id="show")
    def refresh_list(current: str | None):
        names = subject_names(root)
        return gr.update(choices=names, value=current if current in names else (names[0] if names else None))

    refresh.click(refresh_list, [selected], [selected], queue=False)
    deleted = delete.click(on_delete, [selected, sure], [delete_status, selected, sure], concurrency_id="job",
                           concurrency_limit=1)
    return SubjectsPage(selected=selected, changed=[created, deleted], refresh=refresh_list)


def faces_image(path: Path, index: int) -> np.ndarray:
    """The portrait with every face found boxed and numbered; the one `index` chooses in green."""
    image = load_image(path, max_side=1280)
    found = FaceDetector().detect(image, upsample=1)
    chosen = choose_face(found, index, path)  # raises the CLI's message: no face, or no face of that index
    out = image.copy()
    width = max(2, round(max(image.shape[:2]) / 300))
    for i, face in enumerate(found):
        x0, y0, x1, y1 = (int(v) for v in face.box[:4])
        colour = (0, 200, 0) if face is chosen else (230, 160, 0)
        cv2.rectangle(out, (x0, y0), (x1, y1), colour, width)
        cv2.putText(out, str(i), (x0 + width, y0 + 12 * width), cv2.FONT_HERSHEY_SIMPLEX, 0.4 * width, colour, width)
    return out


def voice_summary(subject) -> str:
    if not subject.voice_model:
        return "**Voice:** none (made without speech: outputs keep the driver's voice)"
    prepared = (subject.voice_summary or {}).get("prepare") or {}
    minutes = prepared.get("minutes_kept") if isinstance(prepared, dict) else None
    extra = f", from {minutes:.1f} min of speech" if isinstance(minutes, (int, float)) else ""
    return f"**Voice:** model `{subject.voice_model}`{extra}"


def _voice_model(files: list[str] | None, work_dir: Path) -> tuple[Path | None, Path | None]:
    """The uploaded voice model as create_subject takes it: a .safetensors file, or a folder with the
    so-vits-svc config.json and G_*.pth (made in the work folder; returned second, to remove afterwards)."""
    if not files:
        return None, None
    paths = [Path(f) for f in files]
    if len(paths) == 1 and paths[0].suffix == ".safetensors":
        return paths[0], None
    folder = work_dir / "scratch" / uuid.uuid4().hex
    folder.mkdir(parents=True)
    for p in paths:
        copy_file(p, folder / p.name)
    return folder, folder
