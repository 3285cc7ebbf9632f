"""Verify page: any file in, each layer of marking with a plain verdict out (`reenact verify`)."""

from __future__ import annotations

from pathlib import Path

import gradio as gr
import pandas as pd

from reenact.provenance.verify import describe_layers, verdict, verify
from reenact.ui.jobs import status


def build(ctx) -> None:
    with gr.Row():
        with gr.Column(scale=2):
            file = gr.File(label="Any video or audio file", elem_id="verify-file")
            frames = gr.Number(label="Video frames sampled for the watermark", value=48, precision=0, minimum=1)
            run = gr.Button("Verify", variant="primary", elem_id="verify-run")
        with gr.Column(scale=3):
            verdict_html = gr.HTML(elem_id="verify-verdict")
            layers = gr.Dataframe(label="Layers", headers=["layer", "finding"], interactive=False, wrap=True,
                                  elem_id="verify-layers")
            report_json = gr.JSON(label="Report (the same as `reenact verify --json`)")

    def on_verify(path: str | None, frames_: float | None):
        if not path:
            return status("upload a file to verify", ok=False), None, None
        report, error = ctx.jobs.run(lambda: verify(Path(path), max_frames=int(frames_ or 48)))
        if error:
            return status(error, ok=False), None, None
        return (status(f"{Path(path).name}: {verdict(report)}", ok=report["marked"]),
                pd.DataFrame(describe_layers(report), columns=["layer", "finding"]), report)

    run.click(on_verify, [file, frames], [verdict_html, layers, report_json], concurrency_id="job",
              concurrency_limit=1, show_progress_on=[verdict_html])
