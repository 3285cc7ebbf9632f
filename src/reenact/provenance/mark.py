"""Mark an existing video file with every layer: the reference use of the provenance API.

The animate pipeline does the same inside its own render loop; this function
serves tests, benchmarks and marking a file made elsewhere.
"""

from __future__ import annotations

import logging
from pathlib import Path

from reenact.media.audio import has_audio, read_audio
from reenact.files import temporary_path
from reenact.media.video import VideoWriter, iter_frames, probe
from reenact.provenance.audio_mark import mark_audio
from reenact.provenance.label import draw_label
from reenact.provenance.manifest import Claims, sign_mp4
from reenact.provenance.payload import Payload
from reenact.provenance.video_mark import VideoMarker

log = logging.getLogger(__name__)


def mark_file(in_path: str | Path, out_path: str | Path, payload: Payload | None = None, claims: Claims | None = None,
              label: bool = True, crf: int = 18, max_seconds: float | None = None) -> Claims:
    """Re-encode `in_path` into `out_path` with label (optional), watermarks, metadata and manifest."""
    in_path, out_path = Path(in_path), Path(out_path)
    payload = payload or (claims.payload if claims else Payload.new())
    claims = claims or Claims(payload, settings={"visible_label": label})
    info = probe(in_path)
    limit = int(max_seconds * float(info.fps)) if max_seconds else None
    marker = VideoMarker(payload)
    unsigned = temporary_path(out_path, "unsigned")
    try:
        writer = VideoWriter(unsigned, info.fps, crf=crf)
        try:
            for i, frame in enumerate(iter_frames(in_path)):
                if limit is not None and i >= limit:
                    break
                writer.write(marker.mark(draw_label(frame) if label else frame))
            audio = None
            if has_audio(in_path):
                audio = read_audio(in_path)
                if limit is not None:
                    audio.samples = audio.samples[:, : int(writer.frames_written / float(info.fps) * audio.sample_rate)]
                audio = mark_audio(audio, payload)
        except BaseException:
            writer.abort()
            raise
        writer.close(audio)
        sign_mp4(unsigned, out_path, claims)
    finally:
        unsigned.unlink(missing_ok=True)
    return claims
