"""Voice on real speech (../shared/assets/speech): a small slt model converts kal and real recordings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

SPEECH = Path(__file__).resolve().parents[2] / "shared" / "assets" / "speech"
DRIVERS = SPEECH.parent / "drivers"

pytestmark = pytest.mark.skipif(not (SPEECH / "corpus").is_dir(),
                                reason="shared speech corpus (../shared/assets/speech) is not present")


@pytest.fixture(scope="module")
def slt_model(tmp_path_factory) -> Path:
    """Trained on 100 slt_train sentences (about 4 minutes), linked into a folder."""
    from reenact.voice.world.model import TrainConfig, train_voice

    d = tmp_path_factory.mktemp("slt")
    for p in sorted((SPEECH / "corpus" / "slt_train").glob("*.flac"))[::4][:100]:
        (d / p.name).symlink_to(p)
    return train_voice(d, d / "slt.safetensors", TrainConfig())


def test_kal_converts_towards_slt(slt_model, tmp_path):
    from reenact.evaluate import voice as E
    from reenact.voice.convert import convert_voice

    refs = sorted((SPEECH / "corpus" / "slt_ref").glob("*.flac"))[::10]
    kals = sorted((SPEECH / "corpus" / "kal_drive").glob("*.flac"))
    e_slt, e_kal = E.speaker_embedding(refs), E.speaker_embedding(kals[::10])
    for p in kals[1:50:16]:
        out = convert_voice(p, slt_model, tmp_path / f"{p.stem}.wav")
        y = E.load16(out)
        e = E.embed(y)
        assert e @ e_slt > e @ e_kal, p.name
        assert E.f0_correlation(y, E.load16(p))["f0_corr"] > 0.8, p.name


def test_real_recordings_and_video_tracks(slt_model, tmp_path):
    from reenact.media.audio import read_audio
    from reenact.voice.convert import convert_audio, convert_voice

    for p in sorted(SPEECH.glob("RD_Radio*.wav")):  # real speech, 16 kHz stereo
        y, sr = sf.read(convert_voice(p, slt_model, tmp_path / f"{p.stem}.flac"))
        assert sr == 24000 and abs(len(y) / sr - sf.info(p).duration) < 0.01
        assert np.isfinite(y).all() and 0.01 < np.abs(y).max() <= 1.0
    if (DRIVERS / "vox_driving3.mov").exists():  # an all-zero audio track converts to silence
        out = convert_audio(read_audio(DRIVERS / "vox_driving3.mov"), slt_model)
        assert out.duration > 18 and np.abs(out.samples).max() == 0


def test_prepare_from_a_video(tmp_path):
    from reenact.voice.dataset import prepare_dataset

    video = DRIVERS / "vox_obama.mov"
    if not video.exists():
        pytest.skip("vox_obama.mov not present")
    summary = prepare_dataset([video], tmp_path / "ds")
    assert summary.clips >= 3 and 0.4 < summary.minutes_kept <= summary.minutes_read
    assert any("recommended" in w for w in summary.warnings)
