"""The voice-backend protocol: a new backend is one class plus one registry line (docs/voice.md, "Adding a voice
backend"); options it does not take are refused with one line."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from reenact.errors import ReenactError
from reenact.voice import base
from reenact.voice.base import VoiceBackend, detect_backend, load_backend
from reenact.voice.convert import convert_voice


# ---- the example from docs/voice.md: a whole backend in 30 lines ----
@dataclass
class GainOptions:
    gain: float = 1.0  # multiplies the model's own gain


class GainBackend:
    """A toy voice 'model': a JSON file {"gain": g} whose conversion scales the speech."""

    name = "gain"
    Options = GainOptions

    def __init__(self, gain: float, sample_rate: int = 16000) -> None:
        self.gain, self.sample_rate = gain, sample_rate

    @classmethod
    def recognises(cls, path: Path) -> bool:
        return path.name.endswith(".gain.json")

    @classmethod
    def model_files(cls, path: Path) -> dict[str, Path]:
        return {"model.gain.json": path}

    @classmethod
    def load(cls, path: Path, options: GainOptions) -> "GainBackend":
        return cls(json.loads(path.read_text())["gain"] * options.gain)

    def convert(self, x, sr, transpose, progress=None) -> np.ndarray:
        from reenact.voice.signal import resample

        return (self.gain * resample(np.asarray(x, np.float64), sr, self.sample_rate)).astype(np.float32)
# ---- end of the example ----


@pytest.fixture
def gain_registered(monkeypatch, tmp_path: Path) -> Path:
    monkeypatch.setitem(base.VOICE_BACKENDS, "gain", f"{__name__}:GainBackend")  # the one registry line
    model = tmp_path / "half.gain.json"
    model.write_text(json.dumps({"gain": 0.5}))
    return model


def test_a_new_backend_is_one_class_and_one_registry_line(gain_registered: Path, tmp_path: Path) -> None:
    assert detect_backend(gain_registered) == "gain"
    voice = load_backend(gain_registered)
    assert isinstance(voice, VoiceBackend) and voice.gain == 0.5
    x = 0.2 * np.sin(2 * np.pi * 200 * np.arange(8000) / 8000)
    sf.write(tmp_path / "in.wav", x, 8000)
    y, sr = sf.read(convert_voice(tmp_path / "in.wav", gain_registered, tmp_path / "out.wav", options={"gain": 2.0}))
    assert sr == 16000 and abs(np.abs(y).max() - 0.2) < 0.01  # 0.5 from the model x 2.0 from the option


def test_an_option_the_backend_does_not_take_is_refused(gain_registered: Path, tmp_path: Path) -> None:
    with pytest.raises(ReenactError, match="--f0-method does not apply to the gain voice backend"):
        load_backend(gain_registered, options={"f0_method": "harvest"})
    with pytest.raises(ReenactError, match="unknown voice backend 'nope'"):
        load_backend(gain_registered, backend="nope")
    load_backend(gain_registered, options={"f0_method": None})  # None: not given


def test_world_refuses_sovits_options(tmp_path: Path) -> None:
    from reenact.voice.base import backend_class, make_options

    with pytest.raises(ReenactError, match="--seed does not apply to the world voice backend"):
        make_options(backend_class("world"), {"seed": 3})
    assert make_options(backend_class("sovits"), {"seed": 3, "dtype": None}).seed == 3
