"""The `reenact` command line: commands only; the work is in the modules they call."""

from __future__ import annotations

import functools
import json
import logging
import os
import signal
import sys
import threading
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Iterator, Optional

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from reenact.errors import ReenactError

app = typer.Typer(help="Synthetic talking-head videos for research, marked as synthetic.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
evaluate_app = typer.Typer(help="Objective quality measures of an output.", no_args_is_help=True)
app.add_typer(evaluate_app, name="evaluate")

err = Console(stderr=True)


def _setup_logging(verbose: bool) -> None:
    if err.is_terminal:
        handler: logging.Handler = RichHandler(console=err, show_time=False, show_path=False, markup=False)
    else:  # pipes and CI logs: one line per message, never wrapped
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(message)s",
                        handlers=[handler], force=True)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is, so it unwinds (and cleans up) exactly as on Ctrl-C."""


def _on_sigterm(signum, frame) -> None:
    raise Terminated()


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Handle SIGTERM like SIGINT while a command runs (main thread only; the old handler comes back)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def command(fn):
    """Run a command: user errors become one line on stderr and exit code 2, no traceback; SIGINT and
    SIGTERM stop it with nothing half-written (exit codes 130 and 143)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            with _sigterm_as_interrupt():
                return fn(*args, **kwargs)
        except ReenactError as exc:
            err.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt as exc:
            terminated = isinstance(exc, Terminated)
            err.print(f"{'terminated' if terminated else 'interrupted'}; no output written")
            raise typer.Exit(143 if terminated else 130) from None

    return wrapper


@contextmanager
def progress_display(enabled: bool = True) -> Iterator:
    """A rich progress display; yields progress(stage, done, total)."""
    if not enabled or not err.is_terminal:
        yield lambda stage, done, total: None
        return
    with Progress(TextColumn("{task.description:>8}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), TimeRemainingColumn(), console=err, transient=False) as bar:
        tasks: dict[str, int] = {}

        def update(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total or None)
            bar.update(tasks[stage], completed=done, total=max(total, done) if total else None)  # 0: not known

        yield update


class Opt:
    """The options `animate` and `make` share: defined once, so their defaults and help cannot drift apart."""

    backend = typer.Option("landmark", help="Motion backend: landmark (default, no weights needed), lia (LIA weights: "
                                "`reenact models list`) or liveportrait (512 px; --checkpoint: its official weights "
                                "folder).")
    size = typer.Option("auto", help="Face crop size the backend works at: 256, 512, or auto (the backend chooses: the "
                             "landmark backend takes 512 when the portrait's face crop is 384 px or more, so a large face is "
                             "not blown up from 256; neural backends take their checkpoint's size).")
    reference = typer.Option("auto", help="Driver frame motion is measured from: 'first', 'auto' (the frame whose "
                                  "pose is closest to the source's, never one mid-blink) or a frame number.")
    driver_face_index = typer.Option(0, min=0, help="Which face of the driver to follow when it shows several (0 = "
                                         "largest in its first frame with a face).")
    crf = typer.Option(18, min=0, max=51, help="H.264 quality: lower is better and larger (18 is visually lossless).")
    visible_label = typer.Option(True, "--visible-label/--no-visible-label", help="Draw the 'AI-generated' corner "
                                     "badge. Switching it off (for studies that need unlabelled stimuli) is recorded in the "
                                     "signed manifest; the invisible watermarks and the manifest are always added.")
    checkpoint = typer.Option(None, help="Neural backends: checkpoint file (lia), weights folder (liveportrait) or "
                                   "registry name (see `reenact models list`).")
    motion = typer.Option(None, help="Which of the driver's motion to transfer: all (default), expression (the "
                               "source's head stays still), pose (its face keeps its expression), lips or eyes "
                               "(LivePortrait's animation_region; landmark and liveportrait backends). LIA: all (= "
                               "relative, motion measured from the reference frame) or absolute (for a driver of "
                               "another framing); 'relative' is still accepted.")
    dtype = typer.Option(None, help="Neural motion backends: float32 (default on a CPU) or bfloat16 (faster on CPUs "
                              "with AVX512-BF16/AMX); liveportrait on CUDA: float16 by default, as the official code.")
    device = typer.Option(None, help="Neural motion backends: cpu or cuda (default: cuda when available).")
    stitching = typer.Option(None, "--stitching/--no-stitching", help="liveportrait: stitching, so the pasted-back "
                                  "face does not slide against the shoulders (default on).")
    smooth = typer.Option(None, min=0.0, help="liveportrait: smooth the driver's motion over time with the official "
                               "Kalman smoother; the value is its observation variance (official default 3e-7, larger "
                               "is smoother; 1e-5 is strong).")


class Reference(str, Enum):
    first = "first"
    auto = "auto"


@app.command()
@command
def animate(
    source: Path = typer.Argument(..., help="Portrait image of the person to animate (JPEG, PNG, ...)."),
    driver: Path = typer.Argument(..., help="Driver video whose head, face and lip motion (and sound) are used."),
    output: Path = typer.Option(..., "--output", "-o", help="Output .mp4 path (its folder must exist; an existing "
                                "file is replaced)."),
    backend: str = Opt.backend,
    size: str = Opt.size,
    reference: str = Opt.reference,
    face_index: int = typer.Option(0, min=0, help="Which face of the portrait to animate when it shows several "
                                                  "(0 = largest, 1 = next largest, ...)."),
    driver_face_index: int = Opt.driver_face_index,
    crf: int = Opt.crf,
    paste_back: bool = typer.Option(True, "--paste-back/--no-paste-back",
                                    help="Paste the animated face back into the whole portrait, or write the crop alone."),
    visible_label: bool = Opt.visible_label,
    checkpoint: Optional[str] = Opt.checkpoint,
    motion: Optional[str] = Opt.motion,
    dtype: Optional[str] = Opt.dtype,
    device: Optional[str] = Opt.device,
    stitching: Optional[bool] = Opt.stitching,
    smooth: Optional[float] = Opt.smooth,
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show diagnostic messages."),
) -> None:
    """Animate a portrait with a driver video's motion and write an MP4 with the driver's sound."""
    from reenact.pipeline import animate as run
    from reenact.pipeline import animate_config

    _setup_logging(verbose)
    config = animate_config(backend, size, reference, driver_face_index, crf, visible_label, checkpoint, motion,
                            dtype, device, stitching, smooth, face_index=face_index, paste_back=paste_back)
    with progress_display() as progress:
        result = run(source, driver, output, config, progress=progress)
    err.print(f"wrote {result.output} ({result.frames} frames, {float(result.fps):.3g} fps, "
              f"{result.size[0]}x{result.size[1]}{', with audio' if result.audio else ''}; "
              f"reference frame {result.reference_index}"
              f"{f'; {result.missing_frames} frames without a face bridged' if result.missing_frames else ''})\n"
              f"marked as AI-generated: watermark payload {result.payload}, signed C2PA manifest"
              f"{'' if visible_label else ' (visible label off, recorded in the manifest)'}",
              highlight=False)


@evaluate_app.command("face")
@command
def evaluate_face(
    video: Path = typer.Argument(..., help="The animated video to measure."),
    source: Path = typer.Option(..., "--source", help="The portrait it was made from."),
    driver: Path = typer.Option(..., "--driver", help="The driver video it was made with."),
    as_json: bool = typer.Option(False, "--json", help="Print the measures as JSON."),
    samples: int = typer.Option(32, min=1, help="Output frames sampled for the identity measure."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Also draw mouth opening, eye opening, yaw and pitch of "
                                        "output and driver over time into this image (.png, .jpg, .svg, .pdf)."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show diagnostic messages."),
) -> None:
    """Identity, motion fidelity and jitter of an animated video."""
    from reenact.evaluate.face import evaluate_face as run
    from reenact.evaluate.face import format_face_report, plot_series

    _setup_logging(verbose)
    if plot is not None and plot.suffix.lower() not in (".png", ".jpg", ".jpeg", ".svg", ".pdf"):
        raise ReenactError("--plot needs a .png, .jpg, .svg or .pdf file name", plot)
    with progress_display(not as_json) as progress:
        report = run(video, source, driver, identity_samples=samples, progress=progress, series=plot is not None)
    if plot is not None:
        if "proxies" in report:
            plot_series(report, plot)
            report.pop("proxies")
        else:
            logging.getLogger(__name__).warning("no face in any output frame: nothing to plot")
    if as_json:
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
    else:
        sys.stdout.write(format_face_report(report) + "\n")


models_app = typer.Typer(help="Known model checkpoints: list, download, locate.", no_args_is_help=True)
app.add_typer(models_app, name="models")
train_app = typer.Typer(help="Train a neural backend.", no_args_is_help=True)
app.add_typer(train_app, name="train")


@models_app.command("list")
@command
def models_list() -> None:
    """Known checkpoints: name, size, licence, source and whether it is downloaded."""
    from reenact.models import list_models

    for info, path, present in list_models():
        size = f"{info.size / 2**20:.0f} MiB" if info.size else "size unknown"
        sys.stdout.write(f"{info.name}: {info.description}\n  {'downloaded' if present else 'not downloaded'}: "
                         f"{path}\n  source: {info.url or info.page}\n  sha256: {info.sha256 or 'unknown'}; "
                         f"{size}\n  licence: {info.license}\n")


@models_app.command("fetch")
@command
def models_fetch(
    name: str = typer.Argument(..., help="Model name (see `reenact models list`)."),
    force: bool = typer.Option(False, help="Download again even if the file is there."),
) -> None:
    """Download a checkpoint into the user cache (resumes an interrupted download)."""
    from reenact.models import fetch

    with Progress(TextColumn(name), BarColumn(), TextColumn("{task.completed:,.0f} B"), console=err,
                  disable=not err.is_terminal) as bar:
        task = bar.add_task(name, total=None)
        path = fetch(name, progress=lambda done, total: bar.update(task, completed=done, total=total), force=force)
    sys.stdout.write(f"{path}\n")


@models_app.command("path")
@command
def models_path(name: str = typer.Argument(..., help="Model name (see `reenact models list`).")) -> None:
    """Print where a checkpoint is (or would be) cached."""
    from reenact.models import model_path

    sys.stdout.write(f"{model_path(name)}\n")


@train_app.command("lia")
@command
def train_lia(
    data: Path = typer.Option(..., help="Folder of videos and/or frame folders (one per video)."),
    out: Path = typer.Option(Path("runs/lia"), help="Run folder: checkpoint/NNNNNN.pt and log/ (TensorBoard)."),
    iters: int = typer.Option(800_000, help="Total training steps (a resumed run stops at the same step)."),
    batch_size: int = typer.Option(32, help="Global batch size (split over torchrun processes)."),
    size: int = typer.Option(256, help="Image size."),
    lr: float = typer.Option(0.002, help="Base learning rate."),
    save_every: int = typer.Option(1000, help="Checkpoint every N steps."),
    log_every: int = typer.Option(100, help="Print losses every N steps."),
    vgg_weights: Optional[Path] = typer.Option(None, help="torchvision VGG19 weights (vgg19-dcbb9e9d.pth); "
                                                          "without it the perceptual loss is random (tests only)."),
    precision: str = typer.Option("auto", help="auto (bf16 on CUDA, fp32 on CPU), bf16 or fp32."),
    verbose: bool = typer.Option(True, "--verbose/--quiet", "-v", help="Show progress messages."),
) -> None:
    """Train LIA on pairs of frames (resumes from the newest checkpoint in OUT). Multi-GPU:
    torchrun --nproc_per_node N -m reenact.animate.lia_train --data DIR --out OUT."""
    from reenact.animate.lia_train import TrainConfig, train

    _setup_logging(verbose)
    path = train(TrainConfig(data=str(data), out=str(out), iters=iters, batch_size=batch_size, size=size, lr=lr,
                             save_every=save_every, log_every=log_every,
                             vgg_weights=str(vgg_weights) if vgg_weights else None, precision=precision))
    err.print(f"last checkpoint: {path}", highlight=False)


@app.command()
@command
def verify(
    file: Path = typer.Argument(..., help="The video (or audio) file to check."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    frames: int = typer.Option(48, min=1, help="Video frames sampled for the watermark."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show diagnostic messages."),
) -> None:
    """Report each mark of reenact in FILE: C2PA manifest, video and audio watermarks, metadata.
    Exit code 0: a mark of reenact is found; 1: none is; 2: the file could not be read (fully)."""
    from reenact.provenance.verify import format_verify_report
    from reenact.provenance.verify import verify as run

    _setup_logging(verbose)
    report = run(file, max_frames=frames)
    sys.stdout.write((json.dumps(report, indent=2) if as_json else format_verify_report(report)) + "\n")
    if report["marked"]:
        raise typer.Exit(0)
    if report["unreadable"]:
        raise ReenactError(f"could not be read, so whether it is marked is unknown ({'; '.join(report['unreadable'])})",
                           file)
    raise typer.Exit(1)


subject_app = typer.Typer(help="Subjects: the person a video depicts, with their consent record.",
                          no_args_is_help=True)
app.add_typer(subject_app, name="subject")
SUBJECTS_HELP = "Folder holding subjects (default: $REENACT_SUBJECTS or ~/.local/share/reenact/subjects)."


@subject_app.command("create")
@command
def subject_create(
    name: str = typer.Argument(..., help="Short name: letters, digits, '.', '_' or '-'."),
    portrait: Path = typer.Option(..., "--portrait", help="Portrait image of the subject."),
    speech: list[Path] = typer.Option(..., "--speech", help="The subject's recorded speech: audio or video files "
                                                          "or folders (about 20 minutes; at least 1). Repeat the option."),
    consent: Path = typer.Option(..., "--consent", help="The subject's signed consent document (any file: PDF, scan, "
                                                        "recording). It is copied into the subject; the hash of its "
                                                        "consent record (which holds the document's sha256) goes "
                                                        "into every output's manifest."),
    signer: Optional[str] = typer.Option(None, help="Who signed the consent (default: the subject's name)."),
    scope: Optional[str] = typer.Option(None, help="What the consent covers (default: research use, disclosed)."),
    voice_model: Optional[Path] = typer.Option(None, "--voice-model", help="Use this trained voice model instead of "
                                               "training the offline one: a .safetensors file, or a so-vits-svc "
                                               "folder (config.json + G_*.pth) from `reenact voice train --backend "
                                               "sovits` or so-vits-svc-fork. It is copied into the subject."),
    face_index: int = typer.Option(0, min=0, help="Which face of the portrait is the subject when it shows several "
                                                  "(0 = largest, 1 = next largest, ...)."),
    subjects_dir: Optional[Path] = typer.Option(None, help=SUBJECTS_HELP),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show diagnostic messages."),
) -> None:
    """Make a subject: portrait and face, consent record, prepared speech and a trained voice model.

    Resumable: after an interruption, run the same command again."""
    from reenact.subject import DEFAULT_SCOPE, create_subject

    _setup_logging(verbose)
    subject = create_subject(name, portrait, consent, speech, signer=signer, scope=scope or DEFAULT_SCOPE,
                             root=subjects_dir, step=lambda message: err.print(f"  {message}", highlight=False),
                             voice_model=voice_model, face_index=face_index)
    err.print(f"created subject {subject.name} in {subject.folder}", highlight=False)


@subject_app.command("list")
@command
def subject_list(subjects_dir: Optional[Path] = typer.Option(None, help=SUBJECTS_HELP)) -> None:
    """List subjects."""
    from reenact.subject import list_subjects

    for s in list_subjects(subjects_dir):
        voice = "voice model" if s.voice_model else "no voice"
        sys.stdout.write(f"{s.name}\t{s.created}\tconsent signed by {s.consent.signer}\t{voice}\n")


@subject_app.command("show")
@command
def subject_show(name: str = typer.Argument(..., help="Subject name (see `reenact subject list`)."),
                 subjects_dir: Optional[Path] = typer.Option(None, help=SUBJECTS_HELP)) -> None:
    """Show a subject's profile and consent record as JSON."""
    from reenact.subject import load_subject

    sys.stdout.write(json.dumps(load_subject(name, subjects_dir).to_json(), indent=2) + "\n")


@subject_app.command("delete")
@command
def subject_delete(name: str = typer.Argument(..., help="Subject name (see `reenact subject list`)."),
                   yes: bool = typer.Option(False, "--yes", help="Do not ask."),
                   subjects_dir: Optional[Path] = typer.Option(None, help=SUBJECTS_HELP)) -> None:
    """Delete a subject folder (portrait copy, consent copy, speech and voice model)."""
    from reenact.subject import delete_subject

    if not yes and not typer.confirm(f"delete subject {name} and all its files?"):
        raise typer.Exit(1)
    err.print(f"deleted {delete_subject(name, subjects_dir)}", highlight=False)


@app.command()
@command
def make(
    subject: str = typer.Option(..., "--subject", help="Subject name (see `reenact subject list`)."),
    driver: Path = typer.Option(..., "--driver", help="Driver video: its motion animates the subject, its speech "
                                                      "is re-voiced in the subject's voice."),
    output: Path = typer.Option(..., "--output", "-o", help="Output .mp4; a JSON report is written beside it "
                                "(OUT.json; both replace files of those names)."),
    backend: str = Opt.backend,
    size: str = Opt.size,
    reference: str = Opt.reference,
    driver_face_index: int = Opt.driver_face_index,
    transpose: str = typer.Option("auto", help="Voice: 'auto' (driver's pitch range to the subject's) or semitones."),
    crf: int = Opt.crf,
    visible_label: bool = Opt.visible_label,
    checkpoint: Optional[str] = Opt.checkpoint,
    motion: Optional[str] = Opt.motion,
    dtype: Optional[str] = Opt.dtype,
    device: Optional[str] = Opt.device,
    stitching: Optional[bool] = Opt.stitching,
    smooth: Optional[float] = Opt.smooth,
    voice_device: Optional[str] = typer.Option(None, help="so-vits-svc voice: cpu or cuda (default: cuda if present)."),
    voice_dtype: Optional[str] = typer.Option(None, help="so-vits-svc voice: float32 (default), or bfloat16 (about "
                                              "1.6x faster on CPUs with AMX/AVX512-BF16; 0.5% RMS from float32)."),
    seed: Optional[int] = typer.Option(None, help="so-vits-svc voice: seed of its noise (default 0; same seed, same "
                                       "audio)."),
    measure: bool = typer.Option(True, "--measure/--no-measure", help="Face and voice measures in the report."),
    subjects_dir: Optional[Path] = typer.Option(None, help=SUBJECTS_HELP),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show diagnostic messages."),
) -> None:
    """The whole job: animate the subject, convert the voice, mux, mark, measure; MP4 plus a JSON report."""
    from reenact.pipeline import MakeConfig, animate_config
    from reenact.pipeline import make as run

    _setup_logging(verbose)
    config = MakeConfig(animate=animate_config(backend, size, reference, driver_face_index, crf, visible_label,
                                               checkpoint, motion, dtype, device, stitching, smooth),
                        transpose=transpose, measure=measure,
                        voice_options={"device": voice_device, "dtype": voice_dtype, "seed": seed})
    with progress_display() as progress:
        report = run(subject, driver, output, config, subjects_dir=subjects_dir, progress=progress)
    face = report["measures"].get("face", {})
    voice = report["measures"].get("voice", {})
    err.print(f"wrote {output} and {output.with_suffix('.json')} ({report['video']['frames']} frames; "
              f"watermark payload {report['watermark_payload']})", highlight=False)
    if face or voice:
        identity = face.get("identity", {}).get("median")
        parts = [f"identity distance {identity:.3f}" if identity is not None else "",
                 f"voice similarity to subject {voice['cos_target']:.2f}" if "cos_target" in voice else ""]
        err.print("measures: " + ", ".join(p for p in parts if p), highlight=False)


@app.command()
@command
def ui(
    host: str = typer.Option("127.0.0.1", help="Address to listen on. Anything but a loopback address (127.0.0.1, "
                                               "::1, localhost) needs --auth."),
    port: int = typer.Option(7860, min=1, max=65535, help="Port to listen on."),
    auth: Optional[str] = typer.Option(None, help="USER:PASS asked for by the page; required with a non-loopback "
                                                  "--host."),
    work_dir: Optional[Path] = typer.Option(None, help="Folder for uploads and outputs; the only folder the app "
                                                       "serves files from (default: ~/.local/share/reenact/ui)."),
    max_upload_mb: int = typer.Option(2048, min=1, help="Largest upload accepted, in MiB."),
    subjects_dir: Optional[Path] = typer.Option(None, help=SUBJECTS_HELP),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show diagnostic messages."),
) -> None:
    """A web UI in the browser: subjects, make, verify, models. Local only by default, never a public link."""
    from reenact.ui.config import UIConfig, default_work_dir
    from reenact.ui.server import check_access, parse_auth, serve

    _setup_logging(verbose)
    credentials = parse_auth(auth)
    check_access(host, credentials)  # before the (slow) import of gradio
    config = UIConfig(host=host, port=port, auth=credentials, work_dir=work_dir or default_work_dir(),
                      subjects_dir=subjects_dir, max_upload_mb=max_upload_mb)
    err.print(f"reenact ui: http://{host if ':' not in host else f'[{host}]'}:{port}  (work folder "
              f"{config.work_dir}; Ctrl+C stops it)", highlight=False)
    serve(config)


voice_app = typer.Typer(help="Voice: prepare a speaker's dataset, train a voice model, convert speech.",
                        no_args_is_help=True)
app.add_typer(voice_app, name="voice")


@voice_app.command("prepare")
@command
def voice_prepare(
    inputs: list[Path] = typer.Argument(..., help="Audio or video files, or folders of them, of one speaker."),
    output: Path = typer.Option(..., "--output", "-o", help="Dataset folder (created; re-running resumes)."),
    sample_rate: int = typer.Option(44100, help="Sample rate of the clips."),
    clip_seconds: float = typer.Option(6.0, help="Typical clip length; clips are 2 to 10 s, cut only in pauses."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show why each clip is dropped."),
) -> None:
    """Split speech into clips at pauses, normalise loudness, drop clipped/noisy/short ones; write FLAC + manifest."""
    from reenact.voice.dataset import PrepareConfig, prepare_dataset

    _setup_logging(verbose)
    summary = prepare_dataset(inputs, output, PrepareConfig(sample_rate=sample_rate, target_seconds=clip_seconds))
    sys.stdout.write(summary.text() + "\n")


@voice_app.command("train")
@command
def voice_train(
    dataset: Path = typer.Argument(..., help="Dataset folder from `reenact voice prepare` (or any folder of clips)."),
    output: Path = typer.Option(..., "--output", "-o", help="world: the model file to write (.safetensors); "
                                "sovits: the model folder (config.json, G_*.pth, D_*.pth; re-running resumes)."),
    backend: str = typer.Option("world", help="world (offline, about a minute on a CPU) or sovits (so-vits-svc 4.x, "
                                "neural: a GPU is advised; fine-tunes from --base-g/--base-d)."),
    method: str = typer.Option("ppg-net", help="world: spectral conversion: ppg-net, ppg, warp-knn, knn, warp or pitch "
                               "(docs/voice.md)."),
    workers: int = typer.Option(2, help="world: processes analysing the clips."),
    steps: int = typer.Option(10000, help="sovits: train until this step (a resumed run continues to it)."),
    base_g: Optional[str] = typer.Option(None, "--base-g", help="sovits: base generator G_0.pth to fine-tune from "
                                         "(file, or registry name e.g. sovits-768-g0); default: from scratch."),
    base_d: Optional[str] = typer.Option(None, "--base-d", help="sovits: base discriminator D_0.pth (file or name)."),
    template: str = typer.Option("so-vits-svc-4.0v1", help="sovits: so-vits-svc-4.0v1 (768-dim ContentVec) or legacy "
                                 "(256-dim)."),
    batch_size: Optional[int] = typer.Option(None, help="sovits: clips per step [default: 16, the template's]."),
    checkpoint_interval: int = typer.Option(1000, help="sovits: steps between checkpoints."),
    keep: int = typer.Option(3, help="sovits: checkpoint pairs kept (0: all)."),
    content: str = typer.Option("contentvec", help="sovits: ContentVec folder, pytorch_model.bin or 'contentvec'."),
    f0_method: Optional[str] = typer.Option(None, help="sovits: F0 estimator: dio (default), harvest, parselmouth, crepe "
                                             "or crepe-tiny (crepe: `pip install --no-deps torchcrepe resampy`). world: "
                                             "the driver's F0 analysis when converting, dio or harvest (default: "
                                             "harvest for ppg-net, dio for the other methods; docs/voice.md)."),
    device: str = typer.Option("auto", help="sovits: auto, cpu, cuda or cuda:N."),
    seed: int = typer.Option(1234, help="sovits: random seed."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show diagnostic messages."),
) -> None:
    """Train a voice model: the offline WORLD model (default) or a so-vits-svc 4.x model.

    sovits on several GPUs: torchrun --nproc_per_node N $(which reenact) voice train ... --backend sovits"""
    _setup_logging(verbose or backend == "sovits")
    if backend == "sovits":
        from reenact.models import resolve_checkpoint
        from reenact.voice.sovits.train import TrainConfig as SovitsConfig
        from reenact.voice.sovits.train import train_sovits

        base = [resolve_checkpoint(b) if b else None for b in (base_g, base_d)]
        config = SovitsConfig(steps=steps, base_g=base[0], base_d=base[1], template=template, batch_size=batch_size,
                              checkpoint_interval=checkpoint_interval, keep_ckpts=keep, content=content,
                              f0_method=f0_method or "dio", device=device, seed=seed)
        newest = train_sovits(dataset, output, config)
        if int(os.environ.get("RANK", "0")) == 0:  # under torchrun only rank 0 reports
            sys.stdout.write(f"{newest}\n")
        return
    if backend != "world":
        raise ReenactError(f"unknown voice backend {backend!r}; choose world or sovits")
    from reenact.voice.world.analysis import F0_METHODS
    from reenact.voice.world.model import TrainConfig, VoiceModel, train_voice

    if f0_method is not None and f0_method not in F0_METHODS:
        raise ReenactError(f"--f0-method for the world backend is {' or '.join(F0_METHODS)}, not {f0_method!r}")
    path = train_voice(dataset, output, TrainConfig(method=method, workers=workers, convert_f0=f0_method or "auto"))
    t = VoiceModel.load(path).meta["training"]
    sys.stdout.write(f"{path}: {t['speech_minutes']:.1f} min of voiced speech in {t['clips']} clips, "
                     f"trained in {t['seconds_to_train']:.0f} s\n")


@voice_app.command("convert")
@command
def voice_convert(
    input: Path = typer.Argument(..., help="Speech to convert: any audio or video file, any sample rate."),
    model: Path = typer.Option(..., "--model", "-m", help="Voice model: a .safetensors file (world backend) or a "
                               "so-vits-svc model folder with config.json + G_*.pth, or a G_*.pth (sovits)."),
    output: Path = typer.Option(..., "--output", "-o", help="Output .wav or .flac."),
    transpose: str = typer.Option("auto", help="'auto' (map F0 to the target's range) or semitones, e.g. 12 or -3.5."),
    backend: str = typer.Option("auto", help="auto (by the model path), world or sovits."),
    speaker: Optional[str] = typer.Option(None, help="sovits: speaker name or id in the model (default: the first)."),
    f0_method: Optional[str] = typer.Option(None, help="sovits: F0 estimator: dio (default), harvest, parselmouth, "
                                             "crepe or crepe-tiny (crepe: `pip install --no-deps torchcrepe resampy`)."),
    predict_f0: Optional[bool] = typer.Option(None, "--predict-f0/--no-predict-f0", help="sovits: use the model's F0 "
                                              "decoder (default: only for 'auto' on a model without F0 statistics)."),
    noise_scale: Optional[float] = typer.Option(None, help="sovits: scale of the prior's noise (default 0.4)."),
    content: Optional[str] = typer.Option(None, help="sovits: ContentVec folder, pytorch_model.bin or 'contentvec' "
                                          "(default: the one the model was trained with, else 'contentvec')."),
    device: Optional[str] = typer.Option(None, help="sovits: cpu or cuda (default: cuda when available)."),
    dtype: Optional[str] = typer.Option(None, help="sovits: float32 (default, the reference) or bfloat16 (decoder "
                                        "about 2x faster on CPUs with AVX512-BF16/AMX and on GPUs; 0.5% RMS from "
                                        "float32)."),
    seed: Optional[int] = typer.Option(None, help="sovits: seed of the noise (default 0); the same seed gives the "
                                       "same output."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show diagnostic messages."),
) -> None:
    """Convert the speech of INPUT to the model's voice (same timing; F0 follows the original). Options marked
    sovits apply to so-vits-svc models only; giving one for another backend is an error."""
    from reenact.voice.convert import convert_voice

    _setup_logging(verbose)
    options = {"speaker": speaker, "f0_method": f0_method, "predict_f0": predict_f0, "noise_scale": noise_scale,
               "content": content, "device": device, "dtype": dtype, "seed": seed}
    with progress_display() as progress:
        out = convert_voice(input, model, output, transpose, backend, options,
                            lambda done, total: progress("pieces", done, total))
    sys.stdout.write(f"{out}\n")


@evaluate_app.command("voice")
@command
def evaluate_voice_cmd(
    converted: Path = typer.Argument(..., help="The converted speech (audio or video file)."),
    target: Path = typer.Option(..., "--target", help="The target speaker: dataset folder, folder or file of references."),
    original: Path = typer.Option(..., "--original", help="The original speech it was converted from."),
    reference: Optional[Path] = typer.Option(None, "--reference", help="The target speaker saying the same words (for MCD)."),
    text: Optional[str] = typer.Option(None, "--text", help="Transcript (text, or a .txt file) for the word error rate."),
    model: Optional[Path] = typer.Option(None, "--model", "-m", help="Voice model: also measure the real-time factor."),
    as_json: bool = typer.Option(False, "--json", help="Print the measures as JSON."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show diagnostic messages."),
) -> None:
    """Speaker similarity (resemblyzer), F0 correlation, MCD, pocketsphinx WER and speed of converted speech."""
    from reenact.evaluate.voice import evaluate_voice, format_voice_report

    _setup_logging(verbose)
    report = evaluate_voice(converted, target, original, reference=reference, text=text, model=model)
    sys.stdout.write((json.dumps(report, indent=2) if as_json else format_voice_report(report)) + "\n")


study_app = typer.Typer(help="Study sets: blinded, balanced stimuli from a plan, with a QC gallery "
                        "(docs/study.md).", no_args_is_help=True)
app.add_typer(study_app, name="study")


@study_app.command("check")
@command
def study_check(plan: Path = typer.Argument(..., help="The study plan (TOML; docs/study.md)."),
                verbose: bool = typer.Option(False, "--verbose", "-v", help="Show diagnostic messages.")) -> None:
    """List every problem of a plan at once (files, subjects, consent, drivers, settings); exit 2 if any."""
    from reenact.study import check_plan

    _setup_logging(verbose)
    checked = check_plan(plan)
    counts = {c: sum(1 for x in checked.clips if x.condition == c) for c in ("fake", "face", "real")}
    sys.stdout.write(f"{plan}: ok: {len(checked.clips)} clips ("
                     + ", ".join(f"{n} {c}" for c, n in counts.items() if n)
                     + f"), {checked.participants} participants x {checked.per_participant} clips\n")


@study_app.command("run")
@command
def study_run(
    plan: Path = typer.Argument(..., help="The study plan (TOML; docs/study.md)."),
    output: Path = typer.Option(..., "--output", "-o", help="Study folder (created; running again resumes)."),
    workers: int = typer.Option(1, min=1, help="Local worker processes (each makes one clip at a time)."),
    ray: Optional[str] = typer.Option(None, "--ray", help="Run the clips on Ray instead: 'local' (a cluster on "
                                      "this machine), 'auto' (the cluster `ray start` made here) or an address."),
    retries: int = typer.Option(1, min=0, help="Extra tries of a clip that fails."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show diagnostic messages."),
) -> None:
    """Make every clip of a plan not made yet; write stimuli, key, orders, study.json and the QC gallery.
    Exits 1 when a clip failed (the others are kept; run again to retry)."""
    from reenact.study import run_study

    _setup_logging(verbose)
    with progress_display() as bar:
        def progress(event) -> None:
            if event.state in ("retry", "failed"):
                err.print(f"{event.key}: {event.state}: {event.message}", highlight=False, soft_wrap=True)
            elif event.state == "subject":
                err.print(event.message, highlight=False)
            if event.total:
                bar("clips", event.done, event.total)

        result = run_study(plan, output, workers=workers, ray=ray, retries=retries, progress=progress)
    err.print(f"{output}: {len(result.made)} clips made, {len(result.skipped)} already done, "
              f"{len(result.failed)} failed ({result.seconds:.0f} s); gallery: {output / 'index.html'}",
              highlight=False)
    for key, message in result.failed.items():
        err.print(f"failed: {key}: {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(0 if result.ok else 1)


@study_app.command("status")
@command
def study_status_cmd(study: Path = typer.Argument(..., help="A study folder made by `reenact study run`."),
                     as_json: bool = typer.Option(False, "--json", help="Print the status as JSON.")) -> None:
    """Print how many clips are done, failed and pending (and which failed, with why)."""
    from reenact.study import study_status

    status = study_status(study)
    if as_json:
        sys.stdout.write(json.dumps(status, indent=2) + "\n")
        return
    sys.stdout.write(f"{study}: {len(status['done'])} done, {len(status['failed'])} failed, "
                     f"{len(status['pending'])} pending of {status['total']}\n")
    for key, message in status["failed"].items():
        sys.stdout.write(f"  failed: {key}: {message}\n")
    for key in status["pending"]:
        sys.stdout.write(f"  pending: {key}\n")


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
