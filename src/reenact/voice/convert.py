"""Voice conversion with either backend, chosen by the model path.

- ``world``: one ``.safetensors`` file from `reenact voice train` (the offline backend, voice/world.py);
- ``sovits``: a so-vits-svc 4.x model folder (config.json + G_*.pth) or its G_*.pth file (voice/sovits_infer.py).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from reenact.errors import ReenactError
from reenact.media.audio import Audio

log = logging.getLogger(__name__)

BACKENDS = ("auto", "world", "sovits")
MAX_TRANSPOSE = 48.0  # semitones: four octaves either way


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


def detect_backend(model: str | Path) -> str:
    path = Path(model).expanduser()
    if path.is_dir() or path.suffix == ".pth":
        return "sovits"
    if path.suffix == ".safetensors":
        return "world"
    raise ReenactError("not a voice model: give a .safetensors file (world backend) or a so-vits-svc model "
                       "folder / G_*.pth (sovits backend)", path)


def load_voice(model: Any, backend: str = "auto", options: dict | None = None) -> Any:
    """A loaded model: world.VoiceModel or sovits_infer.SovitsVoice (objects already loaded pass through)."""
    from reenact.voice.sovits_infer import SovitsVoice
    from reenact.voice.world import VoiceModel

    if isinstance(model, (VoiceModel, SovitsVoice)):
        return model
    if backend not in BACKENDS:
        raise ReenactError(f"unknown voice backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if not Path(model).expanduser().exists():
        raise ReenactError("voice model not found", Path(model))
    backend = detect_backend(model) if backend == "auto" else backend
    if backend == "world":
        return VoiceModel.load(model)
    opts = options or {}
    return SovitsVoice.load(model, content=opts.get("content"), device=opts.get("device"),
                            dtype=opts.get("dtype") or "float32")


def convert_array(x: np.ndarray, sr: int, voice: Any, transpose: str | float = "auto", options: dict | None = None,
                  progress: Callable[[int, int], None] | None = None) -> tuple[np.ndarray, int]:
    """Mono audio at `sr` -> (converted audio, its sample rate)."""
    from reenact.voice import features as F
    from reenact.voice import sovits_infer, world

    F.check_signal(np.asarray(x, dtype=np.float64), sr, None)
    if isinstance(voice, world.VoiceModel):
        y = world.convert_array(F.resample(np.asarray(x, np.float64), sr, voice.sample_rate), voice, transpose,
                                progress=progress)
        return y.astype(np.float32), voice.sample_rate
    opts = {k: v for k, v in (options or {}).items() if k not in ("content", "device", "dtype")}
    cfg = sovits_infer.ConvertConfig(transpose=transpose, **opts)
    return sovits_infer.convert_array(x, sr, voice, cfg, progress), voice.sample_rate


def convert_audio(audio: Audio, model: Any, transpose: str | float = "auto", backend: str = "auto",
                  options: dict | None = None) -> Audio:
    """Convert speech held in memory (e.g. a driver video's audio track) to the model's voice."""
    if audio.samples.size == 0:
        raise ReenactError("audio has no samples")
    transpose = parse_transpose(transpose)
    y, sr = convert_array(audio.mono(), audio.sample_rate, load_voice(model, backend, options), transpose, options)
    return Audio(y.astype(np.float32), sr)


def convert_voice(input_path: Path, model: Any, out_path: Path, transpose: str | float = "auto",
                  backend: str = "auto", options: dict | None = None,
                  progress: Callable[[int, int], None] | None = None) -> Path:
    """Convert the speech of any audio or video file; write WAV or FLAC (by suffix) atomically.

    With the world backend an input over ``world.CHUNK_SECONDS`` is streamed: decoded twice in blocks,
    converted piece by piece and written as it comes, so memory does not grow with its length."""
    import soundfile as sf

    from reenact.media.audio import audio_rate, iter_audio
    from reenact.media.container import check_output_path
    from reenact.voice import world

    input_path, out_path = Path(input_path), check_output_path(out_path)
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
    stream = isinstance(voice, world.VoiceModel)
    blocks, head, held = read(), [], 0  # the first CHUNK_SECONDS decide: in memory, or streamed
    for block in blocks:
        head.append(block)
        held += len(block)
        if stream and held > world.CHUNK_SECONDS * rate:
            blocks.close()
            break
    else:
        stream = False
    if not head:
        raise ReenactError("audio track has no samples", input_path)
    tmp = out_path.with_name(f".{out_path.stem}.{os.getpid()}.partial{out_path.suffix}")
    seconds = held / rate
    try:
        if not stream:
            x = np.concatenate(head).astype(np.float32)
            if np.max(np.abs(x)) < 1e-4:
                log.warning("%s: input is silent", input_path)
            y, sr = convert_array(x, rate, voice, transpose, options, progress)
            sf.write(str(tmp), np.clip(y, -1, 1).astype(np.float32), sr, format=fmt, subtype="PCM_16")
        else:  # long: converted piece by piece, written as it comes
            head.clear()
            seconds = 0.0
            with sf.SoundFile(str(tmp), "w", voice.sample_rate, 1, "PCM_16", format=fmt) as out:
                for part in world.convert_blocks(read, rate, voice, transpose, chunk_seconds=world.CHUNK_SECONDS,
                                                 progress=progress):
                    out.write(np.clip(part, -1, 1))
                    seconds += len(part) / voice.sample_rate
        os.replace(tmp, out_path)
    except ReenactError as exc:
        if exc.path is None:
            raise ReenactError(exc.message, input_path) from None
        raise
    finally:
        tmp.unlink(missing_ok=True)
    took = time.perf_counter() - start
    log.info("converted %.1f s in %.2f s (real-time factor %.3f)", seconds, took, took / max(seconds, 1e-9))
    return out_path
