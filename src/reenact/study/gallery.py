"""The QC gallery: STUDY_DIR/index.html, one self-contained page (no external files) to look at every clip.

Per clip: a strip of frames, the face and voice measures, small SVG plots of mouth opening (output against
driver) and F0 (output against the original speech), the verify result, and flags for the clips to look at:
identity distance above its threshold, mouth correlation below its threshold, a fake that does not verify as
marked, a real control that does, loudness off the study's, a clip that failed. The page names subjects and
conditions: it is for the experimenter, not for participants.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

from reenact.files import write_text
from reenact.study.plan import Plan, slug

PLOT_W, PLOT_H = 220, 60


def flags(record: dict, plan: Plan) -> list[str]:
    """What to look at in a clip, by the plan's QC thresholds."""
    out = []
    fake = record["condition"] != "real"
    face = record["measures"].get("face") or {}
    if fake and not record["verify"]["marked"]:
        out.append("fake does not verify as marked")
    if not fake and record["verify"]["marked"]:
        out.append("real control verifies as marked")
    ident = face.get("identity_median")
    if fake and ident is not None and ident > plan.qc.identity_max:
        out.append(f"identity distance {ident:.2f} > {plan.qc.identity_max:g}")
    if fake and face and ident is None:
        out.append("no face found in the output")
    mouth = face.get("mouth_corr")
    if fake and face and (mouth is None or mouth < plan.qc.mouth_corr_min):
        out.append(f"mouth correlation {'n/a' if mouth is None else f'{mouth:.2f}'} < {plan.qc.mouth_corr_min:g}")
    loud = record["video"].get("loudness")
    if loud is not None and abs(loud - plan.settings.loudness) > plan.qc.loudness_tolerance:
        out.append(f"loudness {loud:.1f} LUFS, study {plan.settings.loudness:g}")
    return out


def _polyline(values: list[float], lo: float, hi: float, colour: str, skip_zero: bool = False) -> str:
    """SVG polyline(s) of a series scaled into the plot; zeros split the line when `skip_zero` (unvoiced F0)."""
    if not values:
        return ""
    n = max(len(values) - 1, 1)
    span = (hi - lo) or 1.0
    parts, current = [], []
    for i, v in enumerate(values):
        if v is None or (skip_zero and v <= 0):
            if current:
                parts.append(current)
            current = []
            continue
        x = i / n * PLOT_W
        y = PLOT_H - 2 - (v - lo) / span * (PLOT_H - 4)
        current.append(f"{x:.1f},{y:.1f}")
    if current:
        parts.append(current)
    return "".join(f'<polyline fill="none" stroke="{colour}" stroke-width="1.2" points="{" ".join(p)}"/>'
                   for p in parts if len(p) > 1)


def plot(series: dict[str, list[float] | None], title: str, skip_zero: bool = False) -> str:
    """A small inline SVG of up to two series (first blue, second orange) on one scale."""
    values = [v for s in series.values() if s for v in s if v is not None and (not skip_zero or v > 0)]
    if not values:
        return f'<div class="plot empty">{html.escape(title)}: no data</div>'
    lo, hi = min(values), max(values)
    colours = ["#1f77b4", "#ff7f0e"]
    lines = "".join(_polyline(s or [], lo, hi, c, skip_zero) for s, c in zip(series.values(), colours))
    legend = " ".join(f'<span style="color:{c}">&#9632; {html.escape(k)}</span>'
                      for k, c, s in zip(series, colours, series.values()) if s)
    return (f'<div class="plot"><div class="ptitle">{html.escape(title)} {legend}</div>'
            f'<svg width="{PLOT_W}" height="{PLOT_H}" viewBox="0 0 {PLOT_W} {PLOT_H}">'
            f'<rect width="{PLOT_W}" height="{PLOT_H}" fill="#fafafa" stroke="#ddd"/>{lines}</svg>'
            f'<div class="range">{lo:.3g} &ndash; {hi:.3g}</div></div>')


def _fmt(value, spec: str = ".3f") -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return format(value, spec) if isinstance(value, (int, float)) else html.escape(str(value))


def _card(record: dict, data: dict, plan: Plan) -> str:
    found = flags(record, plan)
    face = record["measures"].get("face") or {}
    voice = record["measures"].get("voice") or {}
    v = record["verify"]
    rows = [("condition", record["condition"]), ("subject", record["subject"] or "-"), ("driver", record["driver"]),
            ("size", f"{record['video']['width']}x{record['video']['height']}, {record['video']['fps']:g} fps, "
                     f"{record['video']['duration']:.2f} s"),
            ("loudness", f"{_fmt(record['video']['loudness'], '.1f')} LUFS"),
            ("verify", ("MARKED" if v["marked"] else "not marked")
             + f" (manifest {v['manifest']}, video wm {_fmt(v['video_watermark'])}, "
               f"audio wm {_fmt(v['audio_watermark'])})")]
    if face:
        rows += [("identity", f"{_fmt(face.get('identity_median'))} (dlib distance, {face.get('identity_samples')} "
                              f"frames; &lt; 0.6 same person)"),
                 ("mouth corr", f"{_fmt(face.get('mouth_corr'))} (gain {_fmt(face.get('mouth_gain'), '.2f')})"),
                 ("yaw / pitch corr", f"{_fmt(face.get('yaw_corr'))} / {_fmt(face.get('pitch_corr'))}"),
                 ("jitter ratio", _fmt(face.get("jitter_ratio"), ".2f"))]
    if voice:
        rows += [("voice", f"to subject {_fmt(voice.get('cos_target'), '.2f')}, to driver "
                           f"{_fmt(voice.get('cos_original'), '.2f')}"),
                 ("F0 corr", _fmt(voice.get("f0_corr")))]
    t = record["timings"]
    rows.append(("time", f"{t['total']:.1f} s (measures {t.get('measures', 0):.1f} s, verify {t.get('verify', 0):.1f} s)"))
    table = "".join(f"<tr><th>{html.escape(k)}</th><td>{val}</td></tr>" for k, val in rows)
    strip = "".join(f'<img src="data:image/jpeg;base64,{b}" alt="">' for b in data.get("strip") or [])
    plots = ""
    mouth = data.get("mouth")
    if mouth:
        plots += plot({"output": mouth.get("mouth_output"), "driver": mouth.get("mouth_driver")}, "mouth opening")
    f0 = data.get("f0")
    if f0:
        plots += plot({"output": f0.get("output"), "original": f0.get("original")}, "F0 (Hz)", skip_zero=True)
    flag_html = "".join(f'<li>{html.escape(f)}</li>' for f in found)
    return (f'<section class="clip{" flagged" if found else ""}" id="{record["id"]}">'
            f'<h2>{record["id"]} <small>{html.escape(record["key"])}</small></h2>'
            f'<div class="strip">{strip}</div>'
            + (f'<ul class="flags">{flag_html}</ul>' if found else '<p class="ok">no flags</p>')
            + f'<div class="body"><table>{table}</table><div class="plots">{plots}</div></div></section>')


STYLE = """
body{font:14px system-ui,sans-serif;margin:1.5em;color:#222}
h1{margin-bottom:.2em} .meta{color:#666;margin-bottom:1em}
.clip{border:1px solid #ccc;border-radius:6px;padding:.6em 1em;margin:1em 0}
.clip.flagged{border-color:#d62728;background:#fff8f8}
.clip h2{font-size:16px;margin:.2em 0} .clip h2 small{color:#888;font-weight:normal}
.strip img{height:112px;margin-right:3px;border-radius:2px}
.flags{color:#d62728;margin:.3em 0} .ok{color:#2ca02c;margin:.3em 0}
.body{display:flex;gap:2em;flex-wrap:wrap} table{border-collapse:collapse}
th{text-align:left;padding-right:1em;color:#555;font-weight:normal;vertical-align:top}
.plot{margin-bottom:.5em} .ptitle{font-size:12px;color:#555} .range{font-size:11px;color:#999}
.failed{color:#d62728}
"""


def write_gallery(plan: Plan, study, records: list[dict], failed: dict[str, str]) -> Path:
    """Write STUDY_DIR/index.html from the clips' records and gallery data; return its path."""
    cards = []
    n_flagged = 0
    for record in sorted(records, key=lambda r: (r["condition"], r["key"])):
        path = study.gallery / f"{slug(record['key'])}.json"
        data = json.loads(path.read_text()) if path.is_file() else {}
        if flags(record, plan):
            n_flagged += 1
        cards.append(_card(record, data, plan))
    failed_html = ""
    if failed:
        items = "".join(f"<li><b>{html.escape(k)}</b>: {html.escape(m)}</li>" for k, m in sorted(failed.items()))
        failed_html = f'<h2 class="failed">{len(failed)} failed</h2><ul class="failed">{items}</ul>'
    s = plan.settings
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(plan.name)}: QC</title>"
            f"<style>{STYLE}</style></head><body><h1>{html.escape(plan.name)}: quality check</h1>"
            f"<div class='meta'>{len(records)} clips made, {n_flagged} flagged; {s.width}x{s.height}, "
            f"{float(s.fps):g} fps, {s.loudness:g} LUFS; thresholds: identity &le; {plan.qc.identity_max:g}, "
            f"mouth corr &ge; {plan.qc.mouth_corr_min:g}. This page names subjects and conditions: keep it "
            f"away from participants.</div>{failed_html}{''.join(cards)}</body></html>")
    out = study.root / "index.html"
    write_text(out, page)
    return out
