"""so-vits-svc training: discriminator layout, spectrograms, losses, and a tiny model trained on CPU
(loss falls, keep-last-K, kill and resume to the same weights, 2-process gloo run, fine-tuning)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from reenact.errors import ReenactError
from reenact.voice.sovits import model as sovits
from reenact.voice.sovits.train import (TEMPLATES, MultiPeriodDiscriminator, TrainConfig, clean_checkpoints,
                                        discriminator_loss, feature_loss, generator_loss, kl_loss, make_config,
                                        mel_spectrogram, spec_to_mel, spectrogram, train_sovits)

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: extra threads only contend
FIXTURES = Path(__file__).parent / "fixtures" / "sovits"
TESTS = Path(__file__).parent


def tiny_template() -> dict:
    """A ~150k-parameter generator at 16 kHz (hop 128) and a discriminator at 1/16 width."""
    return {"train": {**TEMPLATES["so-vits-svc-4.0v1"]["train"], "segment_size": 2048, "batch_size": 2,
                      "learning_rate": 2e-4, "disc_width": 0.0625},
            "data": {"sampling_rate": 16000, "filter_length": 512, "hop_length": 128, "win_length": 512,
                     "n_mel_channels": 40, "mel_fmin": 0.0, "mel_fmax": 8000, "contentvec_final_proj": False,
                     "max_wav_value": 32768.0},
            "model": {"inter_channels": 16, "hidden_channels": 16, "filter_channels": 32, "n_heads": 2, "n_layers": 1,
                      "kernel_size": 3, "p_dropout": 0.1, "resblock": "1", "resblock_kernel_sizes": [3],
                      "resblock_dilation_sizes": [[1, 3, 5]], "upsample_rates": [8, 4, 4],
                      "upsample_initial_channel": 32, "upsample_kernel_sizes": [16, 8, 8], "n_layers_q": 3,
                      "use_spectral_norm": False, "gin_channels": 8, "ssl_dim": 16, "n_speakers": 4,
                      "type_": "hifi-gan"},
            "spk": {}}


def tiny_config(**kw) -> TrainConfig:
    args = dict(steps=8, template=tiny_template(), log_interval=1, eval_interval=1000, checkpoint_interval=4,
                keep_ckpts=2, device="cpu")
    return TrainConfig(**{**args, **kw})


def tiny_encoder():
    from reenact.voice.sovits.content import ContentEncoder

    return ContentEncoder.random(hidden=16, layers=2, proj=16)


def make_dataset(folder: Path, n: int = 4, sr: int = 16000, seconds: float = 1.0) -> Path:
    """Synthetic 'speech' (harmonic tones with vibrato and a syllable envelope) in reenact's dataset layout."""
    import soundfile as sf

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    clips = []
    t = np.arange(int(sr * seconds)) / sr
    for i in range(n):
        phase = 2 * np.pi * np.cumsum(120 + 30 * i + 20 * np.sin(2 * np.pi * 2 * t)) / sr
        x = sum(0.3 / k * np.sin(k * phase) for k in range(1, 8)) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t) ** 2)
        x = x + 0.01 * rng.standard_normal(len(t))
        name = f"clip_{i:04d}.flac"
        sf.write(folder / name, x.astype(np.float32), sr, subtype="PCM_16")
        clips.append({"file": name, "source": "synthetic", "start": 0.0, "end": seconds, "duration": seconds,
                      "loudness_lufs": -23.0, "snr_db": 40.0})
    (folder / "manifest.json").write_text(json.dumps({"config": {"sample_rate": sr}, "inputs": {}, "clips": clips}))
    return folder


def scalars(logdir: Path, tag: str) -> dict[int, float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0, "audio": 0})
    acc.Reload()
    return {e.step: e.value for e in acc.Scalars(tag)}


# ---------------------------------------------------------------- parts


def test_discriminator_keys_match_fork():
    expected = json.loads((FIXTURES / "keys_D.json").read_text())
    got = {k: list(v.shape) for k, v in MultiPeriodDiscriminator().state_dict().items()}
    assert list(got) == list(expected) and got == expected


def test_discriminator_outputs():
    d = MultiPeriodDiscriminator(width=0.0625)
    real, fake, fmap_r, fmap_g = d(torch.randn(2, 1, 2000), torch.randn(2, 1, 2000))
    assert len(real) == len(fake) == 6 and all(r.shape[0] == 2 for r in real)
    assert [len(f) for f in fmap_r] == [7] + [6] * 5


def test_spectrograms_match_fork():
    ref = np.load(FIXTURES / "mel_ref.npz")  # so-vits-svc-fork's mel_processing on this signal, full-size config
    data = TEMPLATES["so-vits-svc-4.0v1"]["data"]
    t = np.arange(8192) / 44100
    y = (0.5 * np.sin(2 * np.pi * 220 * t) + 0.2 * np.sin(2 * np.pi * 3000 * t * (1 + t))
         + 0.05 * np.random.default_rng(0).standard_normal(8192))
    y = torch.tensor(y, dtype=torch.float32)[None]
    spec = spectrogram(y, data)[0]
    assert spec.shape == (1025, 16)
    np.testing.assert_allclose(spec.numpy()[::16], ref["spec"], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(spec_to_mel(spec, data).numpy(), ref["mel"], atol=1e-3)
    np.testing.assert_allclose(mel_spectrogram(y, data)[0].numpy(), ref["mel"], atol=1e-3)


def test_losses():
    ones, zeros = [torch.ones(2, 5)], [torch.zeros(2, 5)]
    assert float(discriminator_loss(ones, zeros)) == 0 and float(discriminator_loss(zeros, ones)) == 2
    assert float(generator_loss(ones)) == 0 and float(generator_loss(zeros)) == 1
    f = [[torch.ones(3), torch.zeros(2)]]
    assert float(feature_loss(f, f)) == 0 and float(feature_loss(f, [[torch.zeros(3), torch.zeros(2)]])) == 2
    z = torch.randn(1, 4, 10)
    mask = torch.ones(1, 1, 10)
    same = kl_loss(z, torch.zeros_like(z), z, torch.zeros_like(z), mask)  # KL of identical unit Gaussians: -0.5*dims
    assert float(same) == pytest.approx(-0.5 * 4)


def test_config_template_and_errors(tmp_path):
    config = make_config(TrainConfig(batch_size=4, template="legacy"), "alice")
    assert config["spk"] == {"alice": 0} and config["model"]["ssl_dim"] == 256 and config["train"]["batch_size"] == 4
    with pytest.raises(ReenactError, match="template"):
        make_config(TrainConfig(template="nope"), "a")
    with pytest.raises(ReenactError, match="not supported"):
        make_config(TrainConfig(template={**tiny_template(), "model": {**tiny_template()["model"],
                                                                       "type_": "mb-istft"}}), "a")
    with pytest.raises(ReenactError, match="manifest"):
        train_sovits(tmp_path, tmp_path / "m", tiny_config())


def test_clean_checkpoints_keeps_last_k(tmp_path):
    for step in (0, 2, 4, 10, 12):
        for prefix in "GD":
            (tmp_path / f"{prefix}_{step}.pth").write_bytes(b"")
    clean_checkpoints(tmp_path, 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["D_0.pth", "D_10.pth", "D_12.pth",
                                                          "G_0.pth", "G_10.pth", "G_12.pth"]


# ---------------------------------------------------------------- training runs


def test_training_loss_falls_and_checkpoints(tmp_path):
    data = make_dataset(tmp_path / "alice")
    model = tmp_path / "model"
    g_path = train_sovits(data, model, tiny_config(steps=40, checkpoint_interval=10, eval_interval=20),
                          encoder=tiny_encoder())
    assert g_path == model / "G_40.pth"
    mel = scalars(model / "logs", "loss/g/mel")
    assert len(mel) == 40
    first, last = np.mean([mel[s] for s in range(1, 6)]), np.mean([mel[s] for s in range(36, 41)])
    assert last < 0.85 * first, (first, last)
    assert scalars(model / "logs", "lr")[40] == pytest.approx(2e-4 * 0.999875 ** 20)  # 2 batches per epoch
    # keep the last 2 pairs, in the fork's layout, with our extra state beside them
    assert sorted(p.name for p in model.glob("*.pth")) == ["D_30.pth", "D_40.pth", "G_30.pth", "G_40.pth"]
    state = torch.load(model / "train_state.pt", weights_only=True)
    assert (state["step"], state["epoch"], state["pos"]) == (40, 20, 0)
    # config.json is the fork's, with the speaker, and it rebuilds the model strictly
    config = sovits.load_config(model / "config.json")
    assert config["spk"] == {"alice": 0} and config["train"]["ckpt_name_by_step"]
    assert 100 < config["reenact"]["f0"]["median_hz"] < 260
    g = sovits.build_generator(config)
    _, _, lr, epoch = sovits.load_checkpoint(g_path, g)
    assert (lr, epoch) == (2e-4, 20)
    ckpt = torch.load(model / "D_40.pth", weights_only=True)
    assert set(ckpt) == {"model", "iteration", "optimizer", "learning_rate"}
    assert len(list((model / "cache").glob("*.pt"))) == 4
    # the generator speaks at eval: audio samples are in TensorBoard
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(model / "logs"), size_guidance={"audio": 0})
    acc.Reload()
    assert {"gen/audio_0", "gt/audio_0"} <= set(acc.Tags()["audio"])
    # running again to the same step trains nothing, keeps the weights and reuses the cached features
    before = torch.load(g_path, weights_only=True)["model"]
    cached = {p: p.stat().st_mtime_ns for p in (model / "cache").glob("*.pt")}
    assert train_sovits(data, model, tiny_config(steps=40), encoder=tiny_encoder()) == g_path
    after = torch.load(g_path, weights_only=True)["model"]
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert cached == {p: p.stat().st_mtime_ns for p in (model / "cache").glob("*.pt")}
    # checkpoints without our state file (e.g. written by the fork) still resume, from the files alone
    (model / "train_state.pt").unlink()
    assert train_sovits(data, model, tiny_config(steps=42), encoder=tiny_encoder()) == model / "G_42.pth"
    assert torch.load(model / "train_state.pt", weights_only=True)["epoch"] == 21


RUNNER = """
import logging, sys, torch
from pathlib import Path
sys.path.insert(0, {tests!r})
from test_sovits_train import make_dataset, tiny_config, tiny_encoder
from reenact.voice.sovits.train import train_sovits
logging.basicConfig(level=logging.INFO)
torch.set_num_threads(1)
data = Path({data!r})
data = data if (data / "manifest.json").is_file() else make_dataset(data)
train_sovits(data, {model!r}, tiny_config(steps={steps}, checkpoint_interval={every}, keep_ckpts=0,
             **{extra}), encoder=tiny_encoder())
"""


def _runner(tmp_path: Path, model: Path, steps: int, every: int, extra: str = "{}") -> Path:
    script = tmp_path / f"run_{model.name}_{steps}.py"
    script.write_text(RUNNER.format(tests=str(TESTS), data=str(tmp_path / "alice"), model=str(model), steps=steps,
                                    every=every, extra=extra))
    return script


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@pytest.mark.slow  # several processes
def test_kill_and_resume_ends_at_the_same_weights(tmp_path):
    model = tmp_path / "killed"
    log = tmp_path / "killed.log"
    proc = subprocess.Popen([sys.executable, str(_runner(tmp_path, model, 10_000, 3))], env=_env(),
                            stdout=subprocess.DEVNULL, stderr=log.open("w"))
    state_path, deadline = model / "train_state.pt", time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if state_path.is_file() and torch.load(state_path, weights_only=True)["step"] >= 3:
                break
            time.sleep(0.05)
        assert proc.poll() is None, log.read_text()[-2000:]
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    killed_at = torch.load(state_path, weights_only=True)["step"]
    assert killed_at >= 3 and killed_at % 3 == 0
    target = killed_at + 3  # an odd step count: the killed run stopped in the middle of an epoch
    resumed = subprocess.run([sys.executable, str(_runner(tmp_path, model, target, 3))], env=_env(),
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resuming from step {killed_at}" in resumed.stderr
    whole = tmp_path / "whole"
    straight = subprocess.run([sys.executable, str(_runner(tmp_path, whole, target, 3))], env=_env(),
                              capture_output=True, text=True, timeout=300)
    assert straight.returncode == 0, straight.stderr[-2000:]
    for name in (f"G_{target}.pth", f"D_{target}.pth"):
        a = torch.load(model / name, weights_only=True)
        b = torch.load(whole / name, weights_only=True)
        assert a["iteration"] == b["iteration"]
        for k in a["model"]:
            torch.testing.assert_close(a["model"][k], b["model"][k], rtol=1e-5, atol=1e-6, msg=f"{name} {k}")
    assert (torch.load(model / "train_state.pt", weights_only=True)["pos"]
            == torch.load(whole / "train_state.pt", weights_only=True)["pos"])


@pytest.mark.slow  # several processes
def test_two_process_gloo_run(tmp_path):
    # Through torchrun, as users run it. Its agent holds the rendezvous store on a port the kernel gave it; a port
    # picked here, closed and handed to the ranks could be taken in between (CI once hung here for 300 s).
    make_dataset(tmp_path / "alice")
    model = tmp_path / "ddp"
    script = _runner(tmp_path, model, 2, 2, "dict(extra={'batch_size': 1})")
    logs = tmp_path / "logs"
    out = tmp_path / "torchrun.log"  # a file, not a pipe: a full pipe would stall a rank
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                             "--log-dir", str(logs), "--redirects", "3", str(script)], env=_env(),
                            stdout=out.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        proc.wait(timeout=300)
    except subprocess.TimeoutExpired:
        pass
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # the agent and both ranks
            proc.wait()
    errors = [next(logs.rglob(f"{r}/stderr.log"), out).read_text() for r in range(2)]
    assert proc.returncode == 0, out.read_text()[-2000:] + "\n".join(e[-2000:] for e in errors)
    assert "on cpu x2" in errors[0]
    assert (model / "G_2.pth").is_file() and (model / "D_2.pth").is_file()
    state = torch.load(model / "train_state.pt", weights_only=True)
    assert state["world"] == 2 and len(state["rng"]) == 2 and state["step"] == 2
    # 4 clips over 2 ranks at batch 1: 2 steps are one epoch
    assert (state["epoch"], state["pos"]) == (1, 0)


def test_fine_tune_from_base_models(tmp_path):
    data = make_dataset(tmp_path / "alice", n=3)
    template = tiny_template()
    base_cfg = {**template, "model": {**template["model"], "n_speakers": 7}}
    torch.manual_seed(5)
    g = sovits.build_generator(base_cfg)
    d = MultiPeriodDiscriminator(width=0.0625)
    sovits.save_checkpoint(g, None, 1e-4, 0, tmp_path / "G_base.pth")
    sovits.save_checkpoint(d, None, 1e-4, 0, tmp_path / "D_base.pth")
    model = tmp_path / "model"
    train_sovits(data, model, tiny_config(steps=1, base_g=tmp_path / "G_base.pth", base_d=tmp_path / "D_base.pth"),
                 encoder=tiny_encoder())
    config = sovits.load_config(model / "config.json")
    assert config["model"]["n_speakers"] == 7  # the base model's speaker table is kept
    tuned = torch.load(model / "G_1.pth", weights_only=True)["model"]
    # one small step away from the base, not from a fresh initialisation
    assert (tuned["emb_g.weight"] - g.state_dict()["emb_g.weight"]).abs().max() < 1e-2
    # a shared inference-only export (no posterior encoder, float16) fine-tunes too; enc_q learns anew
    export = {k: v.half() for k, v in g.state_dict().items() if not k.startswith("enc_q.")}
    torch.save({"model": export, "iteration": 0, "optimizer": None, "learning_rate": 1e-4}, tmp_path / "G_export.pth")
    train_sovits(data, tmp_path / "from_export", tiny_config(steps=1, base_g=tmp_path / "G_export.pth"),
                 encoder=tiny_encoder())
    assert (tmp_path / "from_export" / "G_1.pth").is_file()
    wrong = {**template, "model": {**template["model"], "ssl_dim": 8}}
    sovits.save_checkpoint(sovits.build_generator(wrong), None, 1e-4, 0, tmp_path / "G_wrong.pth")
    with pytest.raises(ReenactError, match="8-dim"):
        train_sovits(data, tmp_path / "other", tiny_config(steps=1, base_g=tmp_path / "G_wrong.pth"),
                     encoder=tiny_encoder())
