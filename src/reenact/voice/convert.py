"""Voice conversion with any backend (voice/base.py): file and stream I/O, nothing backend-specific.

- ``world``: one ``.safetensors`` file from `reenact voice train` (the offline backend, voice/world/);
- ``sovits``: a so-vits-svc 4.x model folder (config.json + G_*.pth) or its G_*.pth file (voice/sovits/).

An input over `STREAM_SECONDS` is streamed: decoded in blocks (twice where the backend needs the whole input's
F0 first), converted piece by piece and written as it comes, so memory does not grow with its length.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from reenact.errors import ReenactError
from reenact.files import atomic_write, clear_stale_partials
from reenact.media.audio import Audio, audio_rate, iter_audio
from reenact.media.container import check_output_path
from reenact.voice import signal as S
from reenact.voice.base import Progress, VoiceBackend, detect_backend, load_backend, stream_in_pieces

log = logging.getLogger(__name__)

__all__ = ["convert_array", "convert_audio", "convert_voice", "detect_backend", "load_voice", "parse_transpose"]

MAX_TRANSPOSE = 48.0  # semitones: four octaves either way
STREAM_SECONDS = 60.0  # longer inputs are converted in pieces cut in pauses (bounded memory)


def parse_transpose(value: str | float) -> str | float:
    """'auto', or a finite number of semitones within +-MAX_TRANSPOSE (a string such as '12' or '-3.5')."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    try:
        semitones = float(value)
    except (TypeError, ValueError):
        raise ReenactError(f"--transpose must be 'auto' or a number of semitones, not {value!r}") from None
    if not np.isfinite(semitones) or abs(semitones) > MAX_TRANSPOSE:
        raise ReenactError(f"--transpose must be 'auto' or semitones between -{MAX_TRANSPOSE:g} and "
                           f"{MAX_TRANSPOSE:g}, not {value!r}")
    return semitones


def load_voice(model: Any, backend: str = "auto", options: dict | None = None) -> VoiceBackend:
    """A loaded voice backend (one already loaded passes through)."""
    if isinstance(model, VoiceBackend):
        return model
    return load_backend(model, backend, options)


def convert_array(x: np.ndarray, sr: int, voice: VoiceBackend, transpose: str | float = "auto",
                  progress: Progress | None = None) -> tuple[np.ndarray, int]:
    """Mono audio at `sr` -> (converted float32 audio, its sample rate)."""
    S.check_signal(np.asarray(x, dtype=np.float64), sr, None)
    return np.asarray(voice.convert(x, sr, transpose, progress), np.float32), voice.sample_rate


def convert_audio(audio: Audio, model: Any, transpose: str | float = "auto", backend: str = "auto",
                  options: dict | None = None) -> Audio:
    """Convert speech held in memory (e.g. a driver video's audio track) to the model's voice."""
    if audio.samples.size == 0:
        raise ReenactError("audio has no samples")
    transpose = parse_transpose(transpose)
    y, sr = convert_array(audio.mono(), audio.sample_rate, load_voice(model, backend, options), transpose)
    return Audio(y, sr)


def convert_voice(input_path: Path, model: Any, out_path: Path, transpose: str | float = "auto",
                  backend: str = "auto", options: dict | None = None, progress: Progress | None = None) -> Path:
    """Convert the speech of any audio or video file; write WAV or FLAC (by suffix) atomically."""
    import soundfile as sf

    input_path, out_path = Path(input_path), check_output_path(out_path)
    clear_stale_partials(out_path)
    fmt = {".wav": "WAV", ".flac": "FLAC"}.get(out_path.suffix.lower())
    if fmt is None:
        raise ReenactError("output must end in .wav or .flac", out_path)
    if out_path.resolve() == input_path.resolve():
        raise ReenactError("output would overwrite the input; choose another file name", out_path)
    transpose = parse_transpose(transpose)
    voice = load_voice(model, backend, options)
    start = time.perf_counter()
    rate = audio_rate(input_path)
    read = lambda: (block[0] for block in iter_audio(input_path, rate, mono=True))
    blocks, head, held, stream = read(), [], 0, False  # the first STREAM_SECONDS decide: in memory, or streamed
    for block in blocks:
        head.append(block)
        held += len(block)
        if held > STREAM_SECONDS * rate:
            blocks.close()
            stream = True
            break
    if not head:
        raise ReenactError("audio track has no samples", input_path)
    seconds = held / rate
    try:
        with atomic_write(out_path) as tmp:
            if not stream:
                x = np.concatenate(head).astype(np.float32)
                if np.max(np.abs(x)) < 1e-4:
                    log.warning("%s: input is silent", input_path)
                y, sr = convert_array(x, rate, voice, transpose, progress)
                sf.write(str(tmp), np.clip(y, -1, 1).astype(np.float32), sr, format=fmt, subtype="PCM_16")
            else:  # long: converted piece by piece, written as it comes
                head.clear()
                pieces = (voice.convert_stream(read, rate, transpose, progress) if hasattr(voice, "convert_stream")
                          else stream_in_pieces(voice, read, rate, transpose, STREAM_SECONDS, progress))
                seconds = 0.0
                with sf.SoundFile(str(tmp), "w", voice.sample_rate, 1, "PCM_16", format=fmt) as out:
                    for part in pieces:
                        out.write(np.clip(part, -1, 1))
                        seconds += len(part) / voice.sample_rate
    except ReenactError as exc:
        if exc.path is None:
            raise ReenactError(exc.message, input_path) from None
        raise
    took = time.perf_counter() - start
    log.info("converted %.1f s in %.2f s (real-time factor %.3f)", seconds, took, took / max(seconds, 1e-9))
    return out_path
