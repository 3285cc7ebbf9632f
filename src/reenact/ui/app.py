"""The Gradio app: one tab per page, wired to the same Python API as the command line."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from reenact.ui import make as make_page
from reenact.ui import models as models_page
from reenact.ui import study as study_page
from reenact.ui import subjects as subjects_page
from reenact.ui import verify as verify_page
from reenact.ui.jobs import Jobs
from reenact.ui.config import UIConfig

CSS = """
.reenact-status { padding: 0.5em 0.8em; border-radius: 6px; font-family: monospace; white-space: pre-wrap;
                  overflow-wrap: anywhere; }
.reenact-ok { background: #e8f5e9; color: #1b5e20; }
.reenact-error { background: #ffebee; color: #b71c1c; }
.reenact-disclosure { font-size: 0.9em; opacity: 0.8; }
"""

INTRO = ("**reenact**: synthetic talking-head videos for research. Every output is marked as AI-generated "
         "(visible label, video and audio watermarks, a signed C2PA manifest), and every subject needs a "
         "consent record.")


@dataclass
class Context:
    """What every page needs: the settings and the one-job-at-a-time runner."""

    config: UIConfig
    jobs: Jobs

    @property
    def subjects_dir(self) -> Path | None:
        return self.config.subjects_dir


def build_app(config: UIConfig) -> gr.Blocks:
    """The whole app (not launched)."""
    ctx = Context(config, Jobs(config.work_dir))
    # Uploads and the page's copies older than a day are deleted every hour (outputs/ is kept).
    with gr.Blocks(title="reenact", delete_cache=(3600, 86400)) as demo:
        gr.Markdown(INTRO, elem_classes="reenact-disclosure")
        with gr.Tabs():
            with gr.Tab("Subjects", id="subjects"):
                subjects = subjects_page.build(ctx)
            with gr.Tab("Make", id="make"):
                make = make_page.build(ctx)
            with gr.Tab("Verify", id="verify"):
                verify_page.build(ctx)
            with gr.Tab("Study", id="study"):
                study_page.build(ctx)
            with gr.Tab("Models", id="models"):
                models = models_page.build(ctx)
        # A subject made or deleted on one page is offered on the other; the lists are read on each page load.
        for event in subjects.changed:
            event.then(make.refresh, [make.subject], [make.subject], queue=False)
        demo.load(subjects.refresh, [subjects.selected], [subjects.selected], queue=False)
        demo.load(make.refresh, [make.subject], [make.subject], queue=False)
        demo.load(models_page.table, None, [models.table, models.where], queue=False)
    demo.queue(default_concurrency_limit=1, max_size=32)
    return demo


def launch_options(config: UIConfig) -> dict:
    """Blocks.launch arguments: local only unless told, never a share link, uploads capped, files served only from
    the work folder: its outputs/ (videos and reports reenact wrote) and Gradio's upload folder in it (uploads and
    copies of what the page shows, served as downloads unless their type is safe to show)."""
    return dict(server_name=config.host, server_port=config.port, auth=config.auth, share=False,
                max_file_size=config.max_upload_bytes, allowed_paths=[str(config.work_dir / "outputs")], ssr_mode=False,
                show_error=False, inbrowser=False, quiet=True, css=CSS, footer_links=[])
