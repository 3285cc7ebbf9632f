"""Models page: which checkpoints are installed, which are missing, and where to put them (`reenact models`)."""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr
import pandas as pd

from reenact.models import cache_dir, list_models, manual_instructions


@dataclass
class ModelsPage:
    table: gr.Dataframe
    where: gr.Markdown


def build(ctx) -> ModelsPage:
    gr.Markdown("The default backends (landmark motion, WORLD voice) need no downloaded weights. Neural backends "
                "load the checkpoints below; `reenact models fetch NAME` downloads one, or save a file downloaded "
                "by hand at the path shown.")
    table_ = gr.Dataframe(label="Checkpoints", headers=["model", "status", "path", "licence", "source"],
                          interactive=False, wrap=True, elem_id="models-table",
                          column_widths=["13%", "8%", "32%", "25%", "22%"])
    where = gr.Markdown(elem_id="models-where")
    refresh = gr.Button("Refresh", size="sm")
    refresh.click(table, None, [table_, where], queue=False)
    return ModelsPage(table=table_, where=where)


def table():
    rows, missing = [], []
    for info, path, present in list_models():
        rows.append((info.name, "installed" if present else "missing", str(path), info.license,
                     info.url or info.page))
        if not present:
            missing.append(f"- **{info.name}** ({info.description}): {manual_instructions(info)}")
    where = (f"Checkpoints live in `{cache_dir() / 'models'}` (set `$REENACT_CACHE` to move them).\n\n"
             + ("**Missing:**\n" + "\n".join(missing) if missing else "Every known checkpoint is installed."))
    return pd.DataFrame(rows, columns=["model", "status", "path", "licence", "source"]), where
