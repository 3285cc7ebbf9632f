"""Make page: a subject and a driver in, a marked video, its measures and its JSON report out (`reenact make`)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import pandas as pd

from reenact.animate.base import BACKENDS
from reenact.pipeline import MakeConfig, animate_config, make
from reenact.ui.jobs import safe_name, status
from reenact.ui.subjects import subject_names

# Where each stage of make sits on the page's progress bar (start, end); the stages are the ones
# pipeline.make reports: the voice conversion, the two passes over the driver, then the measures.
STAGES = {"voice": (0.0, 0.1), "track": (0.1, 0.3), "render": (0.3, 0.7), "identity": (0.7, 1.0)}
STAGES_NO_MEASURE = {"voice": (0.0, 0.15), "track": (0.15, 0.45), "render": (0.45, 1.0)}


@dataclass
class MakePage:
    subject: gr.Dropdown
    refresh: object  # refresh(current) -> the subject list's update


def build(ctx) -> MakePage:
    root = ctx.subjects_dir
    with gr.Row():
        with gr.Column(scale=2):
            subject = gr.Dropdown(label="Subject", choices=[], value=None, elem_id="make-subject")
            driver = gr.File(label="Driver video: its motion animates the subject; its speech is re-voiced",
                             file_types=["video"], elem_id="make-driver")
            with gr.Row():
                backend = gr.Dropdown(label="Motion backend", choices=sorted(BACKENDS), value="landmark")
                size = gr.Radio(label="Face crop size", choices=["auto", "256", "512"], value="auto",
                                elem_id="make-size")
            with gr.Row():
                reference = gr.Textbox(label="Reference frame (auto, first or a number)", value="auto")
                driver_face_index = gr.Number(label="Driver face index (0 = largest)", value=0, precision=0,
                                              minimum=0)
            with gr.Row():
                transpose = gr.Textbox(label="Voice transpose (auto or semitones)", value="auto")
                crf = gr.Slider(label="H.264 quality (CRF, lower is better)", minimum=0, maximum=51, step=1,
                                value=18)
            with gr.Row():
                visible_label = gr.Checkbox(label="Visible 'AI-generated' label (switching it off is recorded in "
                                                  "the signed manifest)", value=True)
                measure = gr.Checkbox(label="Face and voice measures in the report", value=True,
                                      elem_id="make-measure")
            with gr.Accordion("Neural motion backend (lia)", open=False):
                checkpoint = gr.Textbox(label="Checkpoint: file or registry name (see Models)")
                motion = gr.Dropdown(label="Motion", choices=["", "relative", "absolute"], value="")
                dtype = gr.Dropdown(label="dtype", choices=["", "float32", "bfloat16"], value="")
                device = gr.Dropdown(label="Device", choices=["", "cpu", "cuda"], value="")
            with gr.Accordion("so-vits-svc voice", open=False):
                voice_device = gr.Dropdown(label="Device", choices=["", "cpu", "cuda"], value="")
                voice_dtype = gr.Dropdown(label="dtype (default float32)", choices=["", "float32", "bfloat16"],
                                          value="")
                seed = gr.Number(label="Seed of its noise (default 0)", value=None, precision=0)
            run = gr.Button("Make", variant="primary", elem_id="make-run")
            run_status = gr.HTML(elem_id="make-status")
        with gr.Column(scale=3):
            video = gr.Video(label="Output (marked as AI-generated)", interactive=False, elem_id="make-video")
            downloads = gr.File(label="Downloads: the video and its JSON report", file_count="multiple",
                                interactive=False, elem_id="make-downloads")
            measures = gr.Dataframe(label="Measures", headers=["measure", "value"], interactive=False,
                                    elem_id="make-measures")
            with gr.Row():
                timings_plot = gr.BarPlot(x="stage", y="seconds", title="Time per stage (s)", height=260,
                                           x_label_angle=-45)
                motion_plot = gr.BarPlot(x="motion", y="correlation", title="Motion: output against driver "
                                         "(correlation)", y_lim=[-1, 1], height=260)
            report_json = gr.JSON(label="Report (the same as `reenact make` writes)", elem_id="make-report")

    def on_make(subject_, driver_, backend_, size_, reference_, driver_face_index_, transpose_, crf_,
                visible_label_, measure_, checkpoint_, motion_, dtype_, device_, voice_device_, voice_dtype_, seed_,
                progress=gr.Progress()):
        empty = (None, None, None, None, None, None)
        if not subject_ or not driver_:
            return (status("choose a subject and upload a driver video", ok=False), *empty)
        stages = STAGES if measure_ else STAGES_NO_MEASURE

        def report_progress(stage: str, done: int, total: int) -> None:
            start, end = stages.get(stage, (None, None))
            if start is None:
                return
            share = done / total if total else 0.0
            progress(start + (end - start) * min(share, 1.0), desc=f"{stage} {done}/{total}" if total else stage)

        def work():
            config = MakeConfig(animate=animate_config(backend_, size_, (reference_ or "auto").strip(),
                                                       int(driver_face_index_ or 0), int(crf_), bool(visible_label_),
                                                       checkpoint_ or None, motion_ or None, dtype_ or None,
                                                       device_ or None),
                                transpose=(transpose_ or "auto").strip(), measure=bool(measure_),
                                voice_options={"device": voice_device_ or None, "dtype": voice_dtype_ or None,
                                               "seed": None if seed_ is None else int(seed_)})
            with ctx.jobs.output_folder(subject_) as folder:
                output = folder / f"{safe_name(subject_)}-{safe_name(driver_)}.mp4"
                progress(0.0, desc="starting")
                return make(subject_, Path(driver_), output, config, subjects_dir=root, progress=report_progress)

        report, error = ctx.jobs.run(work)
        if error:
            return (status(error, ok=False), *empty)
        output = Path(report["output"])
        identity = report["measures"].get("face", {}).get("identity", {}).get("median")
        similarity = report["measures"].get("voice", {}).get("cos_target")
        summary = "; ".join([f"made {output.name}: {report['video']['frames']} frames, watermark payload "
                             f"{report['watermark_payload']}"]
                            + ([f"identity distance {identity:.3f}"] if identity is not None else [])
                            + ([f"voice similarity to subject {similarity:.2f}"] if similarity is not None else []))
        return (status(summary), str(output), [str(output), str(output.with_suffix(".json"))],
                measures_table(report), timings_frame(report), motion_frame(report), report)

    run.click(on_make, [subject, driver, backend, size, reference, driver_face_index, transpose, crf, visible_label,
                        measure, checkpoint, motion, dtype, device, voice_device, voice_dtype, seed],
              [run_status, video, downloads, measures, timings_plot, motion_plot, report_json],
              concurrency_id="job", concurrency_limit=1, show_progress_on=[video])

    def refresh(current: str | None):
        names = subject_names(root)
        return gr.update(choices=names, value=current if current in names else (names[0] if names else None))

    return MakePage(subject=subject, refresh=refresh)


def measures_table(report: dict) -> pd.DataFrame:
    """Every number in the report's measures, one row each (paths and lists left out)."""
    rows: list[tuple[str, str]] = []

    def walk(value, name: str) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                walk(item, f"{name}.{key}" if name else key)
        elif isinstance(value, bool) or value is None:
            rows.append((name, json.dumps(value)))
        elif isinstance(value, (int, float)):
            rows.append((name, f"{value:.4g}" if isinstance(value, float) else str(value)))

    walk(report.get("measures", {}), "")
    return pd.DataFrame(rows, columns=["measure", "value"])


def timings_frame(report: dict) -> pd.DataFrame:
    """Seconds per stage; a part of a stage that has its own total (measure.face in measure) is left out."""
    timings = report["timings"]
    return pd.DataFrame([(k.removeprefix("animate."), float(v)) for k, v in timings.items()
                         if "." not in k or k.split(".")[0] not in timings], columns=["stage", "seconds"])


def motion_frame(report: dict) -> pd.DataFrame:
    motion = report["measures"].get("face", {}).get("motion", {})
    return pd.DataFrame([(part, float(motion[f"{part}_corr"])) for part in ("mouth", "eyes", "yaw", "pitch")
                         if motion.get(f"{part}_corr") is not None], columns=["motion", "correlation"])
