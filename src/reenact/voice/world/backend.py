"""The offline voice backend behind the voice protocol: a WORLD model file from `reenact voice train`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from reenact.voice import signal as S
from reenact.voice.base import Progress
from reenact.voice.world import model as W
from reenact.voice.world.model import VoiceModel, convert_array, convert_blocks


@dataclass
class WorldOptions:
    """The offline backend takes no options beyond the transposition: its model holds its settings."""


class WorldBackend:
    name = "world"
    Options = WorldOptions

    def __init__(self, model: VoiceModel) -> None:
        self.model = model
        self.sample_rate = model.sample_rate

    @classmethod
    def recognises(cls, path: Path) -> bool:
        return path.suffix == ".safetensors"

    @classmethod
    def model_files(cls, path: Path) -> dict[str, Path]:
        return {"model.safetensors": path}

    @classmethod
    def load(cls, path: Path, options: WorldOptions | None = None) -> "WorldBackend":
        return cls(VoiceModel.load(path))

    def convert(self, x: np.ndarray, sr: int, transpose: str | float, progress: Progress | None = None) -> np.ndarray:
        x = S.resample(np.asarray(x, np.float64), sr, self.sample_rate)
        return convert_array(x, self.model, transpose, progress=progress).astype(np.float32)

    def convert_stream(self, read: Callable[[], Iterable[np.ndarray]], rate: int, transpose: str | float,
                       progress: Progress | None = None) -> Iterator[np.ndarray]:
        """Pieces cut in pauses, all transposed by the whole input's F0 statistics (`convert_blocks`)."""
        return convert_blocks(read, rate, self.model, transpose, chunk_seconds=W.CHUNK_SECONDS, progress=progress)
