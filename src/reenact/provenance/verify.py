"""`reenact verify`: read every layer of marking from a file and report each on its own.

Layers: the C2PA manifest (valid / invalid / absent, and its claims), the video
watermark (found, payload, confidence), the audio watermark (found, payload,
confidence) and the MP4 metadata tags. A re-encode strips the manifest and the
tags but not the watermarks; a flipped byte invalidates the manifest but not the
watermarks; so the layers are read independently and a file counts as marked
by reenact when any layer says so.
"""

from __future__ import annotations

import logging
from pathlib import Path

from reenact.errors import ReenactError
from reenact.media.container import open_container
from reenact.provenance import audio_mark, video_mark
from reenact.provenance.manifest import read_manifest, read_metadata

log = logging.getLogger(__name__)


def verify(path: str | Path, max_frames: int = 48) -> dict:
    """Report of every marking layer of a media file; `report["marked"]` is the verdict."""

    path = Path(path)
    with open_container(path) as container:  # raises a clear ReenactError for missing / unreadable files
        has_video, has_audio = bool(container.streams.video), bool(container.streams.audio)
    report: dict = {"file": str(path)}
    try:
        report["manifest"] = read_manifest(path)
    except Exception as exc:  # noqa: BLE001 - an unreadable manifest is a finding, not a crash
        report["manifest"] = {"state": "invalid", "error": str(exc)}
    report["video_watermark"] = _layer(lambda: video_mark.detect_frames(
        video_mark.sample_frames(path, max_frames)).as_dict()) if has_video else {"found": False, "absent": "no video"}
    report["audio_watermark"] = _layer(lambda: audio_mark.detect(path).as_dict()) if has_audio else \
        {"found": False, "absent": "no audio"}
    try:
        report["metadata"] = read_metadata(path)
    except Exception as exc:  # noqa: BLE001 - damaged tags are a finding, not a crash
        report["metadata"] = {"error": _reason(exc)}
    manifest = report["manifest"]
    report["marked"] = bool(report["video_watermark"].get("found") or report["audio_watermark"].get("found")
                            or manifest.get("reenact") or report["metadata"].get("synthetic") == "true")
    payloads = {p for p in (report["video_watermark"].get("payload"), report["audio_watermark"].get("payload"),
                            (manifest.get("claims") or {}).get("payload"), report["metadata"].get("payload")) if p}
    report["payload"] = payloads.pop() if len(payloads) == 1 else (sorted(payloads) if payloads else None)
    # Without a mark, a watermark layer that could not be read leaves the answer open: "could not read"
    # (exit code 2), not "not marked" (1).
    report["unreadable"] = [] if report["marked"] else [
        f"{name.replace('_', ' ')}: {report[name]['error']}" for name in ("video_watermark", "audio_watermark")
        if report[name].get("error")]
    return report


def _reason(exc: BaseException) -> str:
    text = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}{': ' + text[:200] if text else ''}"


def _layer(read) -> dict:
    try:
        return read()
    except ReenactError as exc:
        return {"found": False, "error": exc.message}
    except Exception as exc:  # noqa: BLE001 - a damaged stream can fail in the decoder in many ways
        log.debug("layer read failed", exc_info=True)
        return {"found": False, "error": f"cannot be decoded ({_reason(exc)})"}


def describe_layers(report: dict) -> list[tuple[str, str]]:
    """Each layer of the report in a few plain words: [(layer, finding), ...] (manifest, watermarks, metadata)."""
    m = report["manifest"]
    if m["state"] == "absent":
        manifest = "absent" + (f" ({m['note']})" if m.get("note") else "")
    else:
        manifest = m["state"] + (" (trusted)" if m.get("trusted") else "")
        if m.get("failures"):
            manifest += f"; failures: {', '.join(str(f) for f in m['failures'])}"
        if m.get("error"):
            manifest += f"; {m['error']}"
        if m.get("generator"):
            manifest += f"; by {', '.join(m['generator'])}"
        if m.get("digital_source_type"):
            manifest += f"; {m['digital_source_type'].rsplit('/', 1)[-1]}"
        claims = m.get("claims") or {}
        if claims:
            settings = claims.get("settings") or {}
            manifest += (f"; payload {claims.get('payload')}; consent sha256 {claims.get('consent_sha256') or 'none'}"
                         f"; visible label {'on' if settings.get('visible_label', True) else 'off'}")

    def wm(layer: dict) -> str:
        if layer.get("absent"):
            return f"not applicable ({layer['absent']})"
        if layer.get("error"):
            return f"not read ({layer['error']})"
        if layer["found"]:
            return f"found, payload {layer['payload']}, confidence {layer['confidence']:.2f}"
        return f"not found (confidence {layer.get('confidence', 0):.2f})"

    meta = report["metadata"]
    if meta.get("error"):
        metadata = f"not read ({meta['error']})"
    elif meta.get("synthetic"):
        metadata = f"synthetic={meta['synthetic']}, generator {meta.get('generator', '?')}"
    else:
        metadata = "no reenact tags" + (f" (encoder {meta['tool']})" if meta.get("tool") else "")
    return [("manifest", manifest), ("video watermark", wm(report["video_watermark"])),
            ("audio watermark", wm(report["audio_watermark"])), ("metadata", metadata)]


def verdict(report: dict) -> str:
    """The plain verdict: marked by reenact or not, and the payload the layers carry."""
    text = ("MARKED as made by reenact" if report["marked"] else
            "could not be read fully: whether it is marked is unknown" if report.get("unreadable") else
            "no mark of reenact found")
    payload = report.get("payload")
    if isinstance(payload, list):
        text += f" (layers disagree on the payload: {', '.join(payload)})"
    elif payload:
        text += f" (payload {payload})"
    return text


def format_verify_report(report: dict) -> str:
    """The report as a few readable lines."""
    return "\n".join([f"{report['file']}: {verdict(report)}"]
                     + [f"  {layer:<16} {finding}" for layer, finding in describe_layers(report)])
