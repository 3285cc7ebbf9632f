"""Voice: dataset preparation, WORLD voice training/conversion, measures, on synthesized speech-like audio."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from reenact.errors import ReenactError
from reenact.media.audio import Audio
from reenact.voice import signal as S
from reenact.voice.convert import convert_audio, convert_voice
from reenact.voice.dataset import PrepareConfig, prepare_dataset
from reenact.voice.world import analysis as F
from reenact.voice.world.backend import WorldBackend
from reenact.voice.world.model import TrainConfig, VoiceModel, train_voice

FORMANTS = {"a": (700, 1200, 2600), "i": (300, 2300, 3000), "u": (320, 800, 2400), "e": (500, 1900, 2600)}


def speechlike(seconds: float, sr: int = 24000, f0: float = 120.0, scale: float = 1.0, seed: int = 0,
               noise: float = 0.0) -> np.ndarray:
    """Vowel-like syllables (harmonics shaped by formants, gliding F0) separated by pauses."""
    rng = np.random.default_rng(seed)
    out, t = [], 0.0
    while t < seconds:
        dur = min(rng.uniform(0.8, 1.6), seconds - t)  # a "phrase": several vowels without a pause
        n = int(dur * sr)
        time = np.arange(n) / sr
        pitch = f0 * (1 + 0.15 * np.sin(2 * np.pi * rng.uniform(1, 3) * time + rng.uniform(0, 6)))
        phase = 2 * np.pi * np.cumsum(pitch) / sr
        vowel = np.zeros(n)
        bounds = np.linspace(0, n, 4).astype(int)
        for a, b in zip(bounds[:-1], bounds[1:]):
            formants = [f * scale for f in FORMANTS["aiue"[rng.integers(4)]]]
            seg = np.zeros(b - a)
            for h in range(1, int(min(sr / 2, 6000) / (f0 * 1.3))):
                freq = pitch[a:b] * h
                gain = sum(np.exp(-0.5 * ((freq - fm) / 90.0) ** 2) for fm in formants) + 0.02
                seg += gain * np.sin(h * phase[a:b]) / h**0.5
            vowel[a:b] = seg
        env = np.minimum(1, np.minimum(time, dur - time) / 0.03)
        out += [0.1 * vowel * env / (np.abs(vowel).max() + 1e-9), np.zeros(int(rng.uniform(0.25, 0.45) * sr))]
        t += dur + 0.35
    x = np.concatenate(out)[: int(seconds * sr)]
    x = np.pad(x, (0, int(seconds * sr) - len(x)))
    return x + noise * rng.standard_normal(len(x))


@pytest.fixture(scope="module")
def voice_model(tmp_path_factory) -> Path:
    """A model trained on 90 s of a synthetic 'female' speaker (F0 220 Hz, formants x1.2)."""
    d = tmp_path_factory.mktemp("target")
    for i in range(6):
        sf.write(d / f"t{i}.wav", speechlike(15, sr=16000, f0=220, scale=1.2, seed=10 + i), 16000)
    out = d / "voice.safetensors"
    return train_voice(d, out, TrainConfig(max_pool=20000))


@pytest.fixture()
def driver_wav(tmp_path) -> Path:
    p = tmp_path / "driver.wav"
    sf.write(p, speechlike(4, f0=110, seed=3), 24000)
    return p


def test_cepstrum_round_trip_and_warp():
    n = 513
    hz = np.arange(n) * 12000 / (n - 1)
    sp = (np.exp(-0.5 * ((hz - 800) / 150) ** 2) + 0.05) * np.ones((3, 1))
    cep = F.cepstrum(24000, n, 40)
    back = cep.decode(cep.encode(sp))
    assert np.median(np.abs(np.log(back / sp))) < 0.1
    warped = F.warp_envelope(sp, 1.25)
    assert abs(hz[np.argmax(warped[0])] - 1000) < 30
    band = sp.copy()
    band[:, 300:] = 1e-16
    filled, edge = F.fill_band(band, np.ones(3, bool))
    assert 290 <= edge <= 301 and filled[:, -1].min() > 1e-3


def test_harvest_in_pieces_on_threads():
    from concurrent.futures import ThreadPoolExecutor

    import pyworld

    x = speechlike(4, f0=110, seed=3)
    n = len(pyworld.dio(x, 24000, frame_period=F.FRAME_PERIOD)[0])
    cuts = F.quiet_cuts(x, 24000, n, 2)
    assert len(cuts) == 3 and 0 < cuts[1] < n
    cut = int(cuts[1] * F.FRAME_PERIOD / 1000 * 24000)
    assert np.abs(x[cut - 120 : cut + 120]).max() < 0.01  # a pause
    f0 = F.harvest_f0(x, 24000)
    with ThreadPoolExecutor(2) as pool:
        assert np.array_equal(F.harvest_f0(x, 24000, pool=pool), f0)  # the pieces do not depend on the threads
    assert len(f0) == n and 0.8 < np.median(f0[f0 > 0]) / 110 < 1.25
    one, two = F.analyze(x, 24000, f0_method="harvest"), F.analyze(x, 24000, f0_method="harvest", threads=2)
    assert np.array_equal(one.f0, two.f0) and one.sp.shape == two.sp.shape == (n, 513)
    assert F.analyze(x[:2400], 24000, f0_method="harvest", threads=2).f0.shape == F.analyze(x[:2400], 24000).f0.shape
    with pytest.raises(ReenactError, match="unknown F0 method"):
        F.analyze(x, 24000, f0_method="yin")


def test_quiet_cuts_prefer_the_pause_nearest_the_middle():
    x = np.random.default_rng(0).normal(0, 0.1, 4 * 24000)
    x[int(1.2 * 24000):int(1.3 * 24000)] *= 0.001  # the quietest pause, at 30%
    x[int(2.0 * 24000):int(2.1 * 24000)] *= 0.0015  # 3.5 dB louder, in the middle
    cuts = F.quiet_cuts(x, 24000, F.world_frames(len(x), 24000), 2)
    assert 2.0 <= cuts[1] * F.FRAME_PERIOD / 1000 <= 2.1


def test_conversion_f0_method_harvest_and_old_models(voice_model, monkeypatch):
    from reenact.voice.world import model as world

    seen = []
    analyze = F.analyze
    monkeypatch.setattr(F, "analyze", lambda *a, **k: seen.append(k["f0_method"]) or analyze(*a, **k))
    model = VoiceModel.load(voice_model)
    assert model.meta["config"]["convert_f0"] == "harvest"  # "auto": harvest for ppg-net
    x = speechlike(2, f0=110, seed=4)
    y = world.convert_array(x, model)
    assert y.shape == x.shape and np.isfinite(y).all() and np.abs(y).max() > 0.01
    monkeypatch.setattr(world, "conversion_threads", lambda: 2)  # Harvest's pieces and the posteriors on threads
    assert np.array_equal(world.convert_array(x, model), y)
    del model.meta["config"]["convert_f0"]  # a model file written before the option
    world.convert_array(x, model)
    assert seen == ["harvest", "harvest", "dio"]


def test_prepare_splits_at_pauses_and_resumes(tmp_path):
    sr = 48000
    x = S.resample(speechlike(40, sr=16000, seed=1), 16000, sr)
    stereo = np.stack([x, 0.5 * x], axis=1)
    src = tmp_path / "in"
    src.mkdir()
    sf.write(src / "talk.wav", stereo, sr, subtype="PCM_24")  # 24-bit stereo 48 kHz
    (src / "notes.txt").write_text("not audio")  # not a media extension: ignored in folders
    sf.write(src / "noisy.flac", speechlike(12, sr=16000, seed=2, noise=0.05), 16000)
    clipped = np.clip(speechlike(12, sr=16000, seed=4) * 30, -1, 1)
    sf.write(src / "clipped.wav", clipped, 16000)
    out = tmp_path / "ds"
    cfg = PrepareConfig(sample_rate=24000)
    summary = prepare_dataset([src], out, cfg)
    manifest = json.loads((out / "manifest.json").read_text())
    clips = manifest["clips"]
    assert clips and summary.clips == len(clips)
    assert summary.dropped.get("too noisy", 0) >= 1 and summary.dropped.get("clipped", 0) >= 1
    assert all(c["source"].endswith("talk.wav") for c in clips)
    assert summary.minutes_kept <= summary.minutes_read and summary.warnings  # under 10 minutes
    for c in clips:
        y, rate = sf.read(out / c["file"])
        assert rate == 24000 and y.ndim == 1
        assert 2.0 <= c["duration"] <= 10.5
        edge = int(0.02 * rate)  # cut in pauses: both ends are quiet
        assert c["start"] == 0 or np.abs(y[:edge]).max() < 0.01  # (the file itself starts in speech)
        assert np.abs(y[-edge:]).max() < 0.01
        assert {"start", "end", "loudness_lufs", "snr_db"} <= set(c)
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.glob("*.flac")}
    again = prepare_dataset([src], out, cfg)  # idempotent: nothing rewritten
    assert again.clips == summary.clips
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.flac")} == mtimes
    with pytest.raises(ReenactError, match="not found"):
        prepare_dataset([tmp_path / "missing.wav"], out, cfg)
    (tmp_path / "bad.wav").write_text("this is not audio")
    with pytest.raises(ReenactError):
        prepare_dataset([tmp_path / "bad.wav"], tmp_path / "ds2", cfg)
    assert not (tmp_path / "ds2").exists()  # a run that wrote nothing leaves no empty folder
    for bad_cfg, message in ((PrepareConfig(sample_rate=0), "--sample-rate"),
                             (PrepareConfig(target_seconds=30), "--clip-seconds")):
        with pytest.raises(ReenactError, match=message):
            prepare_dataset([src], tmp_path / "ds3", bad_cfg)
    # the output folder among the inputs: its own clips are not read again
    own = tmp_path / "own"
    own.mkdir()
    (own / "talk.wav").write_bytes((src / "talk.wav").read_bytes())
    first = prepare_dataset([own], own, cfg)
    second = prepare_dataset([own], own, cfg)
    assert second.clips == first.clips == len(list(own.glob("*.flac")))


def test_small_dataset_is_refused(tmp_path):
    sf.write(tmp_path / "a.wav", speechlike(20, sr=16000, seed=5), 16000)
    with pytest.raises(ReenactError, match=r"at least 0.5 min of voiced speech"):
        train_voice(tmp_path, tmp_path / "m.safetensors", TrainConfig(workers=1))
    with pytest.raises(ReenactError, match="must end in .safetensors"):
        train_voice(tmp_path, tmp_path / "m.txt", TrainConfig(workers=1))


def test_model_file_is_safetensors_with_metadata(voice_model):
    from safetensors import safe_open

    with safe_open(str(voice_model), framework="numpy") as f:
        meta = json.loads(f.metadata()["reenact"])
        assert "pool_mc" in f.keys()
    assert meta["method"] == "ppg-net" and meta["sample_rate"] == 24000 and meta["ppg_phones"] == 40
    assert 200 < meta["f0_median_hz"] < 245
    assert meta["training"]["clips"] == 6 and meta["training"]["minutes"] == pytest.approx(1.5, abs=0.01)
    model = VoiceModel.load(voice_model)
    assert model.tensors["pool_mc"].shape[1] == 40
    assert model.tensors["pool_ppg"].shape == (len(model.tensors["pool_mc"]), 40)
    assert model.tensors["net_4_weight"].shape == (2, 39 + model.tensors["pool_ap"].shape[1], 256)


def test_ppg_pool_keeps_whole_clips(voice_model, tmp_path):
    out = train_voice(voice_model.parent, tmp_path / "small.safetensors", TrainConfig(max_pool=3000, workers=1))
    t = VoiceModel.load(out).tensors
    assert len(t["pool_ppg"]) == len(t["pool_mc"]) == 3000
    clip = t["pool_clip"]
    assert np.all(np.diff(clip) >= 0)  # frames in order, grouped by clip
    np.testing.assert_allclose(t["pool_ppg"].astype(np.float32).sum(axis=1), 1.0, atol=0.02)


@pytest.mark.parametrize("method", ["warp", "knn", "warp-knn", "ppg", "ppg-net"])
def test_convert_maps_f0_and_keeps_timing(voice_model, driver_wav, tmp_path, method):
    model = VoiceModel.load(voice_model)
    model.meta["method"] = method
    out = convert_voice(driver_wav, WorldBackend(model), tmp_path / "out.wav")
    y, sr = sf.read(out)
    x, _ = sf.read(driver_wav)
    assert sr == 24000 and len(y) == len(x)
    f0 = F.f0_track(y, sr)
    assert 190 < np.median(f0[f0 > 0]) < 250  # driver at 110 Hz moved to the target's 220 Hz
    from reenact.evaluate.voice import f0_correlation

    assert f0_correlation(S.resample(y, sr, 16000), S.resample(x, sr, 16000))["f0_corr"] > 0.8


def test_transpose_in_semitones(voice_model, driver_wav, tmp_path):
    y, sr = sf.read(convert_voice(driver_wav, voice_model, tmp_path / "up.flac", transpose=12))
    f0 = F.f0_track(y, sr)
    assert 195 < np.median(f0[f0 > 0]) < 250  # 110 Hz one octave up


def test_odd_inputs(voice_model, tmp_path):
    sr = 8000
    x8 = S.resample(speechlike(3, seed=7), 24000, sr)
    sf.write(tmp_path / "8k.wav", x8, sr)
    y, rate = sf.read(convert_voice(tmp_path / "8k.wav", voice_model, tmp_path / "8k_out.wav"))
    assert rate == 24000 and abs(len(y) / rate - 3) < 0.01 and np.abs(y).max() > 0.01
    sf.write(tmp_path / "silent.wav", np.zeros(24000), 24000)
    y, _ = sf.read(convert_voice(tmp_path / "silent.wav", voice_model, tmp_path / "s_out.wav"))
    assert len(y) == 24000 and np.abs(y).max() == 0
    sf.write(tmp_path / "short.wav", speechlike(0.3, seed=8), 24000)
    y, _ = sf.read(convert_voice(tmp_path / "short.wav", voice_model, tmp_path / "short_out.wav"))
    assert len(y) == int(0.3 * 24000)
    sf.write(tmp_path / "tiny.wav", np.zeros(100), 24000)
    with pytest.raises(ReenactError, match="too short"):
        convert_voice(tmp_path / "tiny.wav", voice_model, tmp_path / "t_out.wav")
    clipped = np.clip(speechlike(2, seed=9) * 40, -1, 1)
    sf.write(tmp_path / "clip.wav", np.stack([clipped, clipped], 1), 24000, subtype="PCM_24")
    y, _ = sf.read(convert_voice(tmp_path / "clip.wav", voice_model, tmp_path / "c_out.wav"))
    assert np.abs(y).max() <= 1.0 and np.isfinite(y).all()
    (tmp_path / "text.wav").write_text("hello")
    with pytest.raises(ReenactError):
        convert_voice(tmp_path / "text.wav", voice_model, tmp_path / "x_out.wav")
    with pytest.raises(ReenactError, match=".wav or .flac"):
        convert_voice(tmp_path / "8k.wav", voice_model, tmp_path / "out.mp3")
    with pytest.raises(ReenactError, match="not a reenact voice model"):
        convert_voice(tmp_path / "8k.wav", tmp_path / "8k.wav", tmp_path / "o.wav", backend="world")
    before = (tmp_path / "8k.wav").read_bytes()
    with pytest.raises(ReenactError, match="overwrite the input"):  # inputs are never changed
        convert_voice(tmp_path / "8k.wav", voice_model, tmp_path / "8k.wav")
    assert (tmp_path / "8k.wav").read_bytes() == before
    for bad in ("abc", "inf", "nan", "1e9", "-49"):
        with pytest.raises(ReenactError, match="--transpose"):
            convert_voice(tmp_path / "8k.wav", voice_model, tmp_path / "t.wav", transpose=bad)
    assert not (tmp_path / "t.wav").exists()


def test_long_input_converts_in_pieces_cut_in_pauses(voice_model, monkeypatch):
    """Inputs over chunk_seconds are converted piece by piece (bounded memory), transposed alike, and the
    joins fall in pauses: the result matches converting the whole at once."""
    from reenact.voice.world import model as W

    model = VoiceModel.load(voice_model)
    x = speechlike(9, sr=24000, f0=110, seed=12)
    whole = W.convert_array(x, model)
    lengths = []
    piece = W._convert_piece
    monkeypatch.setattr(W, "_convert_piece", lambda xp, *a: lengths.append(len(xp)) or piece(xp, *a))
    calls = []
    y = W.convert_array(x, model, chunk_seconds=3.0, progress=lambda done, total: calls.append((done, total)))
    assert len(lengths) == 3 and sum(lengths) == len(x) and min(lengths) > 2 * 24000
    # the CLI's progress bar advances piece by piece: the F0 read (total not known yet), then the conversion
    assert calls == [(1, 0), (2, 0), (3, 0), (4, 6), (5, 6), (6, 6)]
    assert len(y) == len(x) and np.isfinite(y).all()
    f0, f0_whole = F.f0_track(y, 24000), F.f0_track(whole, 24000)
    assert abs(np.median(f0[f0 > 0]) / np.median(f0_whole[f0_whole > 0]) - 1) < 0.03  # same transposition
    rms = lambda v: np.sqrt(np.mean(np.square(v)))
    assert abs(rms(y) / rms(whole) - 1) < 0.1
    db = S.frame_db(x, 24000)  # each join in a pause of the input
    for cut in np.cumsum(lengths)[:-1]:
        assert db[int(cut / 240) - 1] < db.max() - 30


def test_pause_pieces_hold_a_bounded_length_and_do_not_depend_on_the_blocks():
    """A long input is cut as it arrives, in pauses, never holding over 1.5 pieces; the cuts are the same
    whatever the block size, and take_pieces finds the same pieces again."""
    x = speechlike(20, sr=16000, f0=110, seed=3)
    whole = list(S.pause_pieces([x], 16000, 3.0))
    for size in (1000, 4096, 70001):
        blocks = [x[i:i + size] for i in range(0, len(x), size)]
        pieces = list(S.pause_pieces(blocks, 16000, 3.0))
        assert [len(p) for p in pieces] == [len(p) for p in whole]
        again = list(S.take_pieces(iter(blocks), [len(p) for p in pieces]))
        assert all(np.array_equal(a, b) for a, b in zip(again, pieces))
    lengths = [len(p) for p in whole]
    assert sum(lengths) == len(x) and len(lengths) >= 5
    assert all(0.75 * 3 * 16000 <= n <= 1.25 * 3 * 16000 + 320 for n in lengths[:-1]) and lengths[-1] <= 1.5 * 3 * 16000
    db = S.frame_db(x, 16000)
    for cut in np.cumsum(lengths)[:-1]:  # each cut in a pause
        assert db[int(cut / 160) - 1] < db.max() - 30


def test_long_file_is_streamed_piece_by_piece(voice_model, tmp_path, monkeypatch):
    """convert_voice streams an input over STREAM_SECONDS (decoded twice in blocks, written as it comes) and
    gives what converting it in memory gives."""
    from reenact.voice import convert as convert_module
    from reenact.voice.convert import convert_voice as convert_any
    from reenact.voice.world import model as W

    monkeypatch.setattr(W, "CHUNK_SECONDS", 3.0)
    monkeypatch.setattr(convert_module, "STREAM_SECONDS", 3.0)
    x = speechlike(10, sr=24000, f0=110, seed=12)
    sf.write(tmp_path / "long.wav", x, 24000, subtype="FLOAT")
    calls = []
    out = convert_any(tmp_path / "long.wav", voice_model, tmp_path / "out.wav",
                      progress=lambda done, total: calls.append((done, total)))
    y, sr = sf.read(out)
    assert sr == 24000 and len(y) == len(x)
    assert len(calls) >= 3 and calls[-1][0] == calls[-1][1] == len(calls)
    in_memory = W.convert_array(x.astype(np.float32), VoiceModel.load(voice_model), chunk_seconds=3.0)
    assert np.max(np.abs(y - np.clip(in_memory, -1, 1))) < 2 / 32768  # the same, but for the 16-bit output


def test_frame_gain_cap_stops_bursts_from_flat_frames():
    """A near-silent flat frame given a vowel's shape at the same mean log level is far louder: capped."""
    from reenact.voice.world.model import cap_frame_gain

    rng = np.random.default_rng(0)
    sp_in = np.exp(rng.normal(0, 1, (50, 64)) + np.linspace(2, -4, 64))  # speech-like: tilted
    sp_out = sp_in * 2.0
    sp_in[10] = np.exp(np.full(64, -12.0))  # flat and quiet
    sp_out[10] = np.exp(np.linspace(6, -30, 64) - 12.0 + 12.0)  # same-ish mean log level, peaky: +~60 dB
    speech = np.ones(50, bool)
    out = cap_frame_gain(sp_in, sp_out, speech)
    gain_db = 10 * np.log10(out.sum(1) / sp_in.sum(1))
    assert np.allclose(out[np.arange(50) != 10], sp_out[np.arange(50) != 10])  # speech frames untouched
    assert gain_db[10] <= np.median(gain_db) + 30.01


def test_convert_audio_in_memory(voice_model):
    audio = Audio(np.stack([speechlike(2, sr=16000, seed=11)] * 2).astype(np.float32), 16000)
    out = convert_audio(audio, voice_model)
    assert out.sample_rate == 24000 and out.channels == 1 and abs(out.duration - 2.0) < 0.01


def test_measures(voice_model, driver_wav, tmp_path):
    from reenact.evaluate import voice as E

    x = E.load16(driver_wav)
    assert E.f0_correlation(x, x)["f0_corr"] > 0.99
    assert E.mel_cepstral_distortion(x, x) == pytest.approx(0.0, abs=1e-6)
    assert E.word_error_rate("The birch canoe slid.", "the birch canoe slid") == 0.0
    assert E.word_error_rate("a b c d", "a x c") == 0.5
    conv = convert_voice(driver_wav, voice_model, tmp_path / "conv.wav")
    target = voice_model.parent
    report = E.evaluate_voice(conv, target, driver_wav, reference=target / "t0.wav", text="the birch canoe",
                              model=voice_model)
    for key in ("cos_target", "cos_original", "baseline_cos_target", "f0_corr", "mcd_db", "wer", "rtf"):
        assert report[key] is not None
    assert -1 <= report["cos_target"] <= 1 and report["rtf"] > 0


def test_cli_help_lists_voice_commands():
    out = subprocess.run([sys.executable, "-m", "reenact.cli", "--help"], capture_output=True, text=True)
    if "voice" not in out.stdout:
        pytest.skip("voice commands are not in the CLI yet")
    sub = subprocess.run([sys.executable, "-m", "reenact.cli", "voice", "--help"], capture_output=True, text=True)
    assert "prepare" in sub.stdout and "train" in sub.stdout and "convert" in sub.stdout


def test_cli_voice_errors_are_one_line(tmp_path):
    (tmp_path / "a.wav").write_text("not audio")
    cli = [sys.executable, "-m", "reenact.cli"]
    out = subprocess.run(cli + ["voice", "--help"], capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip("voice commands are not in the CLI yet")
    r = subprocess.run(cli + ["voice", "train", str(tmp_path), "-o", str(tmp_path / "m.safetensors")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "dataset has no readable audio clips" in r.stderr.strip().splitlines()[-1]
    r = subprocess.run(cli + ["voice", "train", str(tmp_path), "-o", str(tmp_path / "m.safetensors"),
                              "--f0-method", "crepe"], capture_output=True, text=True)
    assert r.returncode == 2 and "dio or harvest" in r.stderr.strip().splitlines()[-1]
    r = subprocess.run(cli + ["voice", "convert", str(tmp_path / "a.wav"), "-m", str(tmp_path / "a.wav"),
                              "-o", str(tmp_path / "o.wav")], capture_output=True, text=True)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1


def test_cli_train_sets_the_conversion_f0(voice_model, tmp_path):
    from typer.testing import CliRunner

    from reenact.cli import app

    out = tmp_path / "d.safetensors"
    r = CliRunner().invoke(app, ["voice", "train", str(voice_model.parent), "-o", str(out), "--f0-method", "dio",
                                 "--workers", "1"])
    assert r.exit_code == 0, r.output
    assert VoiceModel.load(out).meta["config"]["convert_f0"] == "dio"
    r = CliRunner().invoke(app, ["voice", "train", str(voice_model.parent), "-o", str(out), "--method", "ppg",
                                 "--workers", "1"])
    assert r.exit_code == 0, r.output
    assert VoiceModel.load(out).meta["config"]["convert_f0"] == "dio"  # "auto": dio for the other methods
