"""Study page: check a plan, run it with progress, open its QC gallery (`reenact study check|run`)."""

from __future__ import annotations

import html
from pathlib import Path

import gradio as gr

from reenact.study import check_plan, run_study
from reenact.ui.jobs import safe_name, status


def build(ctx) -> None:
    gr.Markdown("A study plan (TOML, docs/study.md) names its portraits, drivers and consent documents by paths "
                "relative to the plan file, so the plan is given as a path on the machine that runs reenact. "
                "The study is written in the work folder, under `outputs/studies/`.")
    with gr.Row():
        with gr.Column(scale=2):
            plan = gr.Textbox(label="Plan file (a path on this machine)", placeholder="/data/my-study/plan.toml",
                              elem_id="study-plan")
            workers = gr.Number(label="Local worker processes", value=1, precision=0, minimum=1)
            retries = gr.Number(label="Extra tries of a clip that fails", value=1, precision=0, minimum=0)
            with gr.Row():
                check = gr.Button("Check", elem_id="study-check")
                run = gr.Button("Run", variant="primary", elem_id="study-run")
        with gr.Column(scale=3):
            study_status = gr.HTML(elem_id="study-status")
            gallery = gr.HTML(elem_id="study-gallery")

    def folder_of(plan_path: Path) -> Path:
        checked = check_plan(plan_path)
        return ctx.config.work_dir / "outputs" / "studies" / safe_name(checked.name or plan_path.stem)

    def on_check(plan_: str | None):
        if not (plan_ or "").strip():
            return status("give the path of a study plan", ok=False), ""

        def work():
            checked = check_plan(Path(plan_.strip()).expanduser())
            counts = {c: sum(1 for x in checked.clips if x.condition == c) for c in ("fake", "face", "real")}
            return (f"{plan_.strip()}: ok: {len(checked.clips)} clips ("
                    + ", ".join(f"{n} {c}" for c, n in counts.items() if n)
                    + f"), {checked.participants} participants x {checked.per_participant} clips")

        text, error = ctx.jobs.run(work)
        return (status(error, ok=False), "") if error else (status(text), "")

    def on_run(plan_: str | None, workers_: float | None, retries_: float | None, progress=gr.Progress()):
        if not (plan_ or "").strip():
            return status("give the path of a study plan", ok=False), ""
        plan_path = Path(plan_.strip()).expanduser()

        def report(event) -> None:
            if event.total:
                progress((event.done, event.total), desc=f"clips ({event.state} {event.key})")
            elif event.state == "subject":
                progress(None, desc=event.message)

        def work():
            out = folder_of(plan_path)
            return out, run_study(plan_path, out, workers=int(workers_ or 1), retries=int(retries_ or 0),
                                  progress=report)

        done, error = ctx.jobs.run(work)
        if error:
            return status(error, ok=False), ""
        out, result = done
        text = (f"{out.name}: {len(result.made)} clips made, {len(result.skipped)} already done, "
                f"{len(result.failed)} failed ({result.seconds:.0f} s)"
                + "".join(f"\nfailed: {key}: {message}" for key, message in result.failed.items()))
        link = (f'<a href="gradio_api/file={html.escape(str(out / "index.html"))}" target="_blank" '
                f'id="study-gallery-link">Open the QC gallery</a> (it names subjects and conditions: not for '
                f'participants); the stimuli, orders and the unblinding key are in <code>{html.escape(str(out))}'
                f'</code>')
        return status(text, ok=result.ok), link

    check.click(on_check, [plan], [study_status, gallery], concurrency_id="job", concurrency_limit=1)
    run.click(on_run, [plan, workers, retries], [study_status, gallery], concurrency_id="job", concurrency_limit=1,
              show_progress_on=[study_status])
