"""Content features and F0 for the so-vits-svc backend (no weights needed: a tiny random HuBERT)."""

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import needs_crepe

from reenact.errors import ReenactError
from reenact.voice.sovits import content as C


def test_interpolate_f0_fills_gaps_like_so_vits_svc_fork():
    f0 = np.array([0, 0, 100, 0, 0, 0, 200, 210, 0, 0], dtype=np.float32)
    filled, uv = C.interpolate_f0(f0)
    assert uv.tolist() == [0, 0, 1, 0, 0, 0, 1, 1, 0, 0]
    # leading gap takes the next voiced value; an inner gap ramps and reaches the next value on its last frame
    assert filled[:3].tolist() == [100, 100, 100]
    np.testing.assert_allclose(filled[3:6], [100 + 100 / 3, 100 + 200 / 3, 200], rtol=1e-6)
    assert filled[8:].tolist() == [210, 210]  # trailing gap holds
    assert C.interpolate_f0(np.zeros(5))[0].tolist() == [0] * 5


def test_repeat_expand_nearest_and_cut():
    c = torch.arange(4.0)[None]
    assert C.repeat_expand(c, 8)[0].tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert C.repeat_expand(c, 3)[0].tolist() == [0, 1, 2]




@pytest.mark.parametrize("method", [pytest.param(m, marks=needs_crepe) if m.startswith("crepe") else m
                                    for m in C.F0_METHODS])
def test_compute_f0_on_a_tone(method):
    sr, hop = 44100, 512
    t = np.arange(sr) / sr
    x = sum(0.3 / k * np.sin(2 * np.pi * 220 * k * t) for k in range(1, 8))  # a voiced, harmonic-rich tone
    f0 = C.compute_f0(x, sr, hop, method)
    assert len(f0) == sr // hop
    voiced = f0[f0 > 0]
    assert len(voiced) > 0.6 * len(f0)
    assert abs(np.median(voiced) - 220) < 3


def crepe_signal(sr: int = 44100, seconds: float = 1.5) -> np.ndarray:
    """The input of fixtures/sovits/crepe_tiny_f0.npz: a harmonic glide around 140 Hz with a 0.2 s gap."""
    t = np.arange(int(seconds * sr)) / sr
    phase = 2 * np.pi * np.cumsum(140 * (1 + 0.15 * np.sin(2 * np.pi * 1.3 * t))) / sr
    x = sum(np.sin(k * phase) / k for k in range(1, 8)) * 0.3
    x[(t > 0.6) & (t < 0.8)] = 0
    return (x + 0.001 * np.sin(2 * np.pi * 3000 * t)).astype(np.float32)


@needs_crepe
def test_crepe_f0_matches_so_vits_svc_fork():
    """Expected values made once by so-vits-svc-fork 4.2.30's compute_f0(x, None, 44100, 512, method=...)."""
    ref = np.load(Path(__file__).parent / "fixtures" / "sovits" / "crepe_tiny_f0.npz")
    x = crepe_signal()
    f0 = C.compute_f0(x, 44100, 512, "crepe-tiny")
    assert f0.shape == ref["f0"].shape and (f0 > 0).all()  # crepe, as the fork calls it, voices every frame
    # the same Viterbi path; each side adds its own dither of up to one 20-cent bin
    assert np.abs(1200 * np.log2(f0 / ref["f0"])).max() < 40
    np.testing.assert_array_equal(f0, C.compute_f0(x, 44100, 512, "crepe-tiny"))  # our dither is seeded
    np.testing.assert_allclose(C.compute_f0(x, 44100, 512, "dio"), ref["dio"], atol=1e-4)


@pytest.mark.parametrize("legacy", [False, True])
def test_random_content_encoder_features(legacy):
    enc = C.ContentEncoder.random(hidden=32, proj=16, legacy=legacy)
    x = np.random.default_rng(0).normal(0, 0.1, 44100).astype(np.float32)
    c, f0, uv = C.get_features(x, 44100, 512, enc)
    assert c.shape == (16 if legacy else 32, 86) and enc.dim == c.shape[0]
    assert f0.shape == uv.shape == (86,)
    assert torch.isfinite(c).all()


def test_contentvec_missing_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("REENACT_CACHE", str(tmp_path))
    with pytest.raises(ReenactError, match="models fetch contentvec"):
        C.ContentEncoder.load("contentvec")
    with pytest.raises(ReenactError, match="not found"):
        C.ContentEncoder.load(tmp_path / "nope")


def test_contentvec_loads_from_a_saved_folder(tmp_path):
    enc = C.ContentEncoder.random(hidden=32, proj=16, fold=False)  # saved as a checkpoint is: weight-normed
    enc.model.save_pretrained(tmp_path / "cv")
    loaded = C.ContentEncoder.load(tmp_path / "cv")
    x = np.random.default_rng(1).normal(0, 0.1, 16000).astype(np.float32)
    torch.testing.assert_close(loaded.encode(x), enc.encode(x))


def test_crepe_missing_says_how_to_install(monkeypatch):
    import importlib

    def missing(name, *args):
        raise ModuleNotFoundError(f"No module named {name!r}", name=name)

    monkeypatch.setattr(importlib, "import_module", missing)
    with pytest.raises(ReenactError, match="pip install --no-deps torchcrepe resampy"):
        C.compute_f0(np.zeros(44100, np.float32), 44100, 512, "crepe")
