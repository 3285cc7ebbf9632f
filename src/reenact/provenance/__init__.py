"""Marks on every output: visible label, video and audio watermarks, signed C2PA manifest, metadata.

Intended use inside a render (see docs/provenance.md):

    payload = Payload.new(output_id)            # one per output
    marker = VideoMarker(payload)
    for frame in frames:
        writer.write(marker.mark(draw_label(frame)) if label else marker.mark(frame))
    audio = mark_audio(audio, payload)          # before muxing
    sign_mp4(tmp_mp4, out_mp4, Claims(payload, output_id, consent_sha256, settings))

and `verify(path)` to read them back.
"""

from reenact.provenance.audio_mark import detect_audio, mark_audio
from reenact.provenance.label import draw_label
from reenact.provenance.manifest import Claims, sign_mp4
from reenact.provenance.payload import ALGORITHM, TOOL_ID, Payload
from reenact.provenance.verify import format_verify_report, verify
from reenact.provenance.video_mark import VideoMarker, detect_video

__all__ = ["ALGORITHM", "TOOL_ID", "Claims", "Payload", "VideoMarker", "detect_audio", "detect_video", "draw_label",
           "format_verify_report", "mark_audio", "sign_mp4", "verify"]
