"""Phonetic posteriorgrams from pocketsphinx's bundled model, and the helpers of the ppg voice method."""

from __future__ import annotations

import numpy as np
import pytest

from reenact.voice.world import phonetic as P
from reenact.voice.world.model import fill_f0_gaps
from reenact.voice.world.phonetic import context_stack


@pytest.fixture(scope="module")
def phone_model() -> P.PhoneModel:
    return P.load_phone_model()


def test_model_files_parse(phone_model):
    m = phone_model
    assert len(m.names) == 42 and "SIL" in m.names and "AA" in m.names
    assert len(m.phones) == 40 and "+NSN+" not in m.phones
    assert m.senones.shape == (42, 3) and len(np.unique(m.senones)) == 126
    assert m.mean.shape == (42, 3, 128, 13) and (m.ivar > 0).all()
    w = m.weights  # (ci, stream, density, state): each state's weights sum to about one (8-bit, truncated)
    assert (w.sum(axis=2) > 0.9).all() and (w.sum(axis=2) < 1.01).all()


def test_mel_filters_and_mfcc():
    fb = P.mel_filters()
    assert fb.shape == (257, 25)
    hz = np.arange(257) * 16000 / 512
    centres = hz[fb.argmax(axis=0)]
    assert 130 <= centres[0] < 250 and 5500 < centres[-1] <= 6800 and np.all(np.diff(centres) > 0)
    t = np.arange(16000) / 16000
    c = P.mfcc(0.3 * np.sin(2 * np.pi * 1000 * t))
    assert c.shape == (1 + (16000 - P.WINDOW) // P.HOP, 13)  # 100 frames per second
    assert np.isfinite(c).all()
    f = P.features(c)
    assert f.shape == (len(c), 3, 13) and np.allclose(f[:, 0].mean(axis=0), 0, atol=1e-9)  # batch CMN
    assert np.allclose(f[5:-5, 1], 0, atol=1e-6)  # a steady tone has no deltas


def test_posteriorgram_rows_are_distributions(phone_model):
    rng = np.random.default_rng(0)
    x = np.concatenate([1e-4 * rng.standard_normal(8000), 0.2 * np.sin(2 * np.pi * 150 * np.arange(8000) / 16000)])
    g = P.posteriorgram(x, phone_model)
    assert g.shape[1] == 40 and len(g) == len(P.mfcc(x))
    assert np.allclose(np.exp(g).sum(axis=1), 1.0)
    assert phone_model.phones[int(np.argmax(np.exp(g[5:30]).mean(axis=0)))] == "SIL"  # near-silence
    assert P.posteriorgram(np.zeros(100), phone_model).shape == (0, 40)


def test_fill_f0_gaps():
    f0 = np.array([0, 100, 0, 0, 121, 0, 0, 0, 0, 0, 130, 0], float)
    out = fill_f0_gaps(f0, 3)
    assert out[2] == pytest.approx(100 * 1.21 ** (1 / 3)) and out[3] == pytest.approx(100 * 1.21 ** (2 / 3))
    assert (out[5:10] == 0).all() and out[0] == 0 and out[-1] == 0  # long gaps and edges stay unvoiced
    assert (fill_f0_gaps(f0, 0) == f0).all()


def test_context_stack_stays_in_segment():
    g = np.arange(6, dtype=float)[:, None]
    seg = np.array([0, 0, 0, 1, 1, 1])
    out = context_stack(g, (1,), seg)
    assert out.shape == (6, 3)
    np.testing.assert_allclose(out[2], [2, 0.7 * 1, 0.7 * 2])  # next frame is in another clip: itself
    np.testing.assert_allclose(out[3], [3, 0.7 * 3, 0.7 * 4])
    np.testing.assert_allclose(context_stack(g, ())[:, 0], g[:, 0])
