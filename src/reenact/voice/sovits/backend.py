"""The so-vits-svc 4.x voice backend behind the voice protocol: a model folder (config.json + G_*.pth) or its
G_*.pth file, with the ContentVec content encoder."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from reenact.voice import signal as S
from reenact.voice.base import Progress
from reenact.voice.sovits import content as C
from reenact.voice.sovits.infer import ConvertConfig, SovitsVoice, convert_array, find_generator

STREAM_PIECE_SECONDS = 60.0  # long inputs are converted in pieces of about this length, cut in pauses


@dataclass
class SovitsOptions(ConvertConfig):
    """Conversion settings (`ConvertConfig`) plus how to load the model."""

    content: str | Path | C.ContentEncoder | None = None  # ContentVec folder/file/'contentvec'; default: the model's
    device: str | None = None  # cpu or cuda; default: cuda when available
    dtype: str = "float32"  # float32 (reference) or bfloat16 (decoder)


class SovitsBackend:
    name = "sovits"
    Options = SovitsOptions

    def __init__(self, voice: SovitsVoice, options: SovitsOptions) -> None:
        self.voice, self.options = voice, options
        self.sample_rate = voice.sample_rate

    @classmethod
    def recognises(cls, path: Path) -> bool:
        return path.is_dir() or path.suffix == ".pth"

    @classmethod
    def model_files(cls, path: Path) -> dict[str, Path]:
        generator, config = find_generator(path)
        return {"config.json": config, generator.name: generator}

    @classmethod
    def load(cls, path: Path, options: SovitsOptions | None = None) -> "SovitsBackend":
        options = options or SovitsOptions()
        voice = SovitsVoice.load(path, content=options.content, device=options.device, dtype=options.dtype)
        return cls(voice, options)

    def config(self, transpose: str | float) -> ConvertConfig:
        fields = {f.name: getattr(self.options, f.name) for f in dataclasses.fields(ConvertConfig)}
        return ConvertConfig(**{**fields, "transpose": transpose})

    def convert(self, x: np.ndarray, sr: int, transpose: str | float, progress: Progress | None = None) -> np.ndarray:
        return convert_array(np.asarray(x), sr, self.voice, self.config(transpose), progress)

    def convert_stream(self, read: Callable[[], Iterable[np.ndarray]], rate: int, transpose: str | float,
                       progress: Progress | None = None) -> Iterator[np.ndarray]:
        """Two reads: the first finds the whole input's F0 (so "auto" shifts every piece alike), the second
        converts pieces of about a minute cut in pauses. Memory is bounded by one piece."""
        cfg = self.config(transpose)
        sr, hop = self.voice.sample_rate, self.voice.hop
        sizes, voiced = [], []
        for piece in S.pause_pieces(read(), rate, STREAM_PIECE_SECONDS):
            sizes.append(len(piece))
            x = S.resample(piece, rate, sr).astype(np.float32)
            if len(x) >= hop:
                f0 = C.compute_f0(x, sr, hop, cfg.f0_method, len(x) // hop, C.f0_peak(x), self.voice.device)
                f0, uv = C.interpolate_f0(f0)
                voiced.append(f0[uv > 0])
            if progress:
                progress(len(sizes), 0)
        f0 = np.concatenate(voiced or [np.zeros(0)])
        semitones, predict = self.voice.shift(f0, np.ones(len(f0)), cfg)
        fixed = dataclasses.replace(cfg, transpose=semitones, predict_f0=predict)
        for i, piece in enumerate(S.take_pieces(read(), sizes)):
            y = convert_array(np.asarray(piece, np.float32), rate, self.voice, fixed)
            fade = np.linspace(0.0, 1.0, min(int(0.005 * sr), len(y) // 2), dtype=np.float32)
            if len(fade):  # cut in pauses: a 5 ms fade at each end, so the joins do not click
                y[: len(fade)] *= fade
                y[len(y) - len(fade):] *= fade[::-1]
            yield y
            if progress:
                progress(len(sizes) + i + 1, 2 * len(sizes))
