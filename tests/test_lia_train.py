"""LIA training: loss falls on a real driver, kill and resume loses nothing, 2-process gloo run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from reenact.animate import lia
from reenact.animate.lia_train import TrainConfig, VGG19Features, load_training_checkpoint, train
from reenact.errors import ReenactError

SHARED = Path(__file__).resolve().parents[2] / "shared"
DRIVER = SHARED / "assets" / "drivers" / "vox_driving2.mp4"
TINY = dict(size=32, style_dim=32, motion_dim=5, max_channels=16, batch_size=4, max_frames=16, log_every=5)
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def tiny_cli_args(cfg: dict) -> list[str]:
    return [f"--{k.replace('_', '-')}={v}" for k, v in cfg.items()]


@pytest.fixture()
def driver_data(tmp_path: Path) -> Path:
    if not DRIVER.exists():
        pytest.skip(f"shared driver {DRIVER} missing (../shared is not beside the repo)")
    data = tmp_path / "data"
    data.mkdir()
    (data / DRIVER.name).symlink_to(DRIVER)
    return data


@pytest.mark.slow  # several processes
def test_loss_falls_and_kill_resume_loses_nothing(driver_data: Path, tmp_path: Path):
    torch.set_num_threads(1)
    cfg = dict(TINY, iters=20, save_every=5)
    losses: list[float] = []
    last = train(TrainConfig(data=str(driver_data), out=str(tmp_path / "a"), **cfg),
                 on_step=lambda i, l: losses.append(l["l1_loss"] + l["vgg_loss"]))
    assert last.name == "000020.pt" and len(losses) == 20
    assert np.mean(losses[-5:]) < 0.9 * np.mean(losses[:5]), losses
    assert list((tmp_path / "a" / "log").glob("events.out.tfevents.*"))  # TensorBoard curves
    # the checkpoint is in the official layout and loads as a generator
    ckpt = load_training_checkpoint(last)
    assert set(ckpt) == {"gen", "dis", "g_optim", "d_optim", "args"} and ckpt["args"].step == 20
    assert lia.load_generator(last).cfg == TrainConfig(data="", **cfg).model

    # the same run in a separate process, killed hard after its first checkpoint, then resumed
    out = tmp_path / "b"
    proc = subprocess.Popen([sys.executable, "-m", "reenact.animate.lia_train", f"--data={driver_data}",
                             f"--out={out}", *tiny_cli_args(cfg)], env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    deadline = time.time() + 120
    while not (out / "checkpoint" / "000005.pt").exists():
        assert proc.poll() is None, proc.stdout.read().decode()
        assert time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    saved = sorted(p.name for p in (out / "checkpoint").glob("*.pt"))
    assert saved and "000020.pt" not in saved, saved
    resumed = train(TrainConfig(data=str(driver_data), out=str(out), **cfg))
    assert resumed.name == "000020.pt"
    a, b = load_training_checkpoint(last), load_training_checkpoint(resumed)
    for part in ("gen", "dis"):
        for k, v in a[part].items():
            torch.testing.assert_close(b[part][k], v, rtol=1e-5, atol=1e-6)


@pytest.mark.slow  # several processes
def test_sigterm_saves_the_current_step(driver_data: Path, tmp_path: Path):
    out = tmp_path / "c"
    proc = subprocess.Popen([sys.executable, "-m", "reenact.animate.lia_train", f"--data={driver_data}",
                             f"--out={out}", *tiny_cli_args(dict(TINY, iters=10_000, save_every=10_000))],
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:
        if line.startswith("[step 5/"):
            break
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0
    saved = [p.name for p in (out / "checkpoint").glob("*.pt")]
    assert len(saved) == 1 and int(saved[0][:6]) >= 5


def _frame_folders(root: Path, n: int = 2) -> Path:
    import cv2

    for k in range(n):
        d = root / f"video{k}"
        d.mkdir(parents=True)
        for i in range(4):
            v, u = np.mgrid[0:40, 0:40] / 39
            img = np.stack([np.sin(6 * u + i * 0.3 + c + k) * 0.5 + 0.5 for c in range(3)], -1)
            img = img * (1 - 0.3 * v[..., None])
            cv2.imwrite(str(d / f"{i:03d}.png"), (255 * img).astype(np.uint8))
    return root


@pytest.mark.slow  # several processes
def test_two_process_gloo(tmp_path: Path):
    data = _frame_folders(tmp_path / "frames")
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "reenact.animate.lia_train", f"--data={data}", f"--out={out}",
           *tiny_cli_args(dict(TINY, iters=3, save_every=3, log_every=1))]
    res = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "[step 3/3]" in res.stdout
    ckpt = load_training_checkpoint(out / "checkpoint" / "000003.pt")
    assert ckpt["args"].step == 3


def test_vgg_weights_from_a_local_file(tmp_path: Path):
    vgg = VGG19Features()
    state = {k: v for k, v in vgg.state_dict().items() if k.startswith("features.")}
    state["classifier.0.weight"] = torch.zeros(2, 2)  # a full torchvision file has more; ignored
    torch.save(state, tmp_path / "vgg19.pth")
    other = VGG19Features()
    other.load(tmp_path / "vgg19.pth")
    assert torch.equal(other.features[0].weight, vgg.features[0].weight)
    torch.save({"x": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(ReenactError, match="VGG19"):
        other.load(tmp_path / "bad.pth")
