"""The `reenact` command line: commands only; the work is in the modules they call."""

from __future__ import annotations

import functools
import json
import logging
import sys
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
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(message)s",
                        handlers=[RichHandler(console=err, show_time=False, show_path=False, markup=False)],
                        force=True)


def command(fn):
    """Run a command: user errors become one line on stderr and exit code 2, no traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ReenactError as exc:
            err.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err.print("interrupted; no output written")
            raise typer.Exit(130) from None

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
            bar.update(tasks[stage], completed=done, total=max(total, done) or None)

        yield update


class Reference(str, Enum):
    first = "first"
    auto = "auto"


@app.command()
@command
def animate(
    source: Path = typer.Argument(..., help="Portrait image of the person to animate (JPEG, PNG, ...)."),
    driver: Path = typer.Argument(..., help="Driver video whose head, face and lip motion (and sound) are used."),
    output: Path = typer.Option(..., "--output", "-o", help="Output MP4 path (its folder must exist)."),
    backend: str = typer.Option("landmark", help="Motion backend: landmark (default, no weights needed) or lia."),
    size: int = typer.Option(256, help="Face crop size the backend works at: 256 or 512."),
    reference: str = typer.Option("auto", help="Driver frame motion is measured from: 'first', 'auto' "
                                               "(the frame whose pose is closest to the source's) or a frame number."),
    face_index: int = typer.Option(0, help="Which face to use when there are several (0 = largest)."),
    crf: int = typer.Option(18, min=0, max=51, help="H.264 quality: lower is better and larger (18 is visually lossless)."),
    paste_back: bool = typer.Option(True, "--paste-back/--no-paste-back",
                                    help="Paste the animated face back into the whole portrait, or write the crop alone."),
    checkpoint: Optional[str] = typer.Option(None, help="Neural backends: checkpoint file or registry name "
                                                        "(see `reenact models list`)."),
    motion: Optional[str] = typer.Option(None, help="LIA: 'relative' (default: motion measured from the reference "
                                                    "frame) or 'absolute' (for a driver of another framing)."),
    dtype: Optional[str] = typer.Option(None, help="Neural backends: float32 (default) or bfloat16."),
    device: Optional[str] = typer.Option(None, help="Neural backends: cpu or cuda (default: cuda when available)."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show diagnostic messages."),
) -> None:
    """Animate a portrait with a driver video's motion and write an MP4 with the driver's sound."""
    from reenact.pipeline import AnimateConfig, animate as run

    _setup_logging(verbose)
    if size not in (256, 512):
        raise ReenactError(f"--size must be 256 or 512, not {size}")
    given = {"checkpoint": checkpoint, "motion": motion, "dtype": dtype, "device": device}
    options = {key: value for key, value in given.items() if value is not None}
    if options and backend == "landmark":
        raise ReenactError(f"--{', --'.join(options)} apply to neural backends, not the landmark backend")
    config = AnimateConfig(backend=backend, size=size, reference=reference, face_index=face_index, crf=crf,
                           paste_back=paste_back, backend_options=options)
    with progress_display() as progress:
        result = run(source, driver, output, config, progress=progress)
    err.print(f"wrote {result.output} ({result.frames} frames, {float(result.fps):.3g} fps, "
              f"{result.size[0]}x{result.size[1]}{', with audio' if result.audio else ''}; "
              f"reference frame {result.reference_index}"
              f"{f'; {result.missing_frames} frames without a face bridged' if result.missing_frames else ''})",
              highlight=False)


@evaluate_app.command("face")
@command
def evaluate_face(
    video: Path = typer.Argument(..., help="The animated video to measure."),
    source: Path = typer.Option(..., "--source", help="The portrait it was made from."),
    driver: Path = typer.Option(..., "--driver", help="The driver video it was made with."),
    as_json: bool = typer.Option(False, "--json", help="Print the measures as JSON."),
    samples: int = typer.Option(32, help="Output frames sampled for the identity measure."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show diagnostic messages."),
) -> None:
    """Identity, motion fidelity and jitter of an animated video."""
    from reenact.evaluate.face import evaluate_face as run, format_face_report

    _setup_logging(verbose)
    with progress_display(not as_json) as progress:
        report = run(video, source, driver, identity_samples=samples, progress=progress)
    if as_json:
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
    else:
        sys.stdout.write(format_face_report(report) + "\n")


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
