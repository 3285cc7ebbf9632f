"""Bad inputs get one line and exit code 2, never a traceback: crafted files, made here, for each case
found by trying to break reenact (issue 15)."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import soundfile as sf
import torch
from typer.testing import CliRunner

from reenact.cli import app
from reenact.errors import ReenactError

runner = CliRunner()
FIXTURES = Path(__file__).parent / "fixtures"


def one_line_error(result, *words: str) -> None:
    """Exit code 2, a single 'error:' line naming `words`, no traceback."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len([line for line in lines if line.startswith("error:")]) == 1, result.output
    assert "Traceback" not in result.output
    for word in words:
        assert word in result.output, result.output


# ------------------------------------------------------------------ images and output paths

def test_one_pixel_portrait(tmp_path: Path, example_driver: Path):
    portrait = tmp_path / "one.png"
    cv2.imwrite(str(portrait), np.zeros((1, 1, 3), np.uint8))
    result = runner.invoke(app, ["animate", str(portrait), str(example_driver), "-o", str(tmp_path / "o.mp4")])
    one_line_error(result, "one.png", "no face")
    assert not (tmp_path / "o.mp4").exists()


@pytest.mark.parametrize("where", ["proc", "file_parent"])
def test_output_folder_checked_before_any_work(tmp_path: Path, example_portrait: Path, example_driver: Path,
                                              monkeypatch, where: str):
    if where == "proc":
        if not Path("/proc/self").exists():
            pytest.skip("no /proc here")
        output = Path("/proc/out.mp4")
    else:
        (tmp_path / "notes.txt").write_text("a file")
        output = tmp_path / "notes.txt" / "out.mp4"
    import reenact.pipeline as pipeline

    def no_work(*args, **kwargs):
        raise AssertionError("work started before the output path was checked")

    monkeypatch.setattr(pipeline, "FaceDetector", no_work)
    result = runner.invoke(app, ["animate", str(example_portrait), str(example_driver), "-o", str(output)])
    one_line_error(result, "out.mp4")


# ------------------------------------------------------------------ LIA checkpoints

def _tiny_lia(tmp_path: Path):
    from reenact.animate import lia

    cfg = lia.LiaConfig(size=32, style_dim=32, motion_dim=5, max_channels=16)
    return lia, {k: v.clone() for k, v in lia.Generator(cfg).state_dict().items()}


def _save_safetensors(state: dict, path: Path) -> Path:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


def test_lia_one_dimensional_direction(tmp_path: Path):
    lia, state = _tiny_lia(tmp_path)
    state["dec.direction.weight"] = torch.zeros(32)
    path = _save_safetensors(state, tmp_path / "g.safetensors")
    with pytest.raises(ReenactError, match="dec.direction.weight"):
        lia.load_generator(path)


def test_lia_without_flow_heads(tmp_path: Path):
    lia, state = _tiny_lia(tmp_path)
    state = {k: v for k, v in state.items() if not k.startswith("dec.to_flows.")}
    path = _save_safetensors(state, tmp_path / "g.safetensors")
    with pytest.raises(ReenactError, match="to_flows"):
        lia.load_generator(path)


@pytest.mark.parametrize("name, shape", [("dec.direction.weight", (32, 7)), ("enc.fc.0.weight", (32, 9)),
                                         ("enc.fc.4.bias", (7,))])
def test_lia_wrong_shape_names_the_tensor(tmp_path: Path, name: str, shape: tuple):
    lia, state = _tiny_lia(tmp_path)
    state[name] = torch.zeros(shape)
    path = _save_safetensors(state, tmp_path / "g.safetensors")
    with pytest.raises(ReenactError, match=rf"weight {name.replace('.', '[.]')} has shape"):
        lia.load_generator(path)


def test_lia_cli_one_line(tmp_path: Path, example_portrait: Path, example_driver: Path):
    lia, state = _tiny_lia(tmp_path)
    state["dec.direction.weight"] = torch.zeros(32)
    path = _save_safetensors(state, tmp_path / "g.safetensors")
    result = runner.invoke(app, ["animate", str(example_portrait), str(example_driver), "-o",
                                 str(tmp_path / "o.mp4"), "--backend", "lia", "--checkpoint", str(path)])
    one_line_error(result, "g.safetensors", "dec.direction.weight")


# ------------------------------------------------------------------ voice models

def _world_model(tmp_path: Path, change=None) -> Path:
    """A ppg-net WORLD model file of the right layout (random values, no training): M=1 member, H=8 hidden."""
    from reenact.voice.world import ppgnet
    from reenact.voice.world.model import FORMAT, VoiceModel

    rng = np.random.default_rng(0)
    dims, phones, n, a, h = 40, 40, 64, 3, 8
    n_in, o = ppgnet.input_width(phones), dims - 1 + a
    shapes = {"pool_mc": (n, dims), "pool_voiced": (n,), "pool_ap": (n, a), "ltas": (513,),
              "mc_mean_voiced": (dims,), "mc_std_voiced": (dims,), "mc_mean_unvoiced": (dims,),
              "mc_std_unvoiced": (dims,), "pool_ppg": (n, phones), "pool_clip": (n,),
              "net_0_weight": (1, h, n_in), "net_0_bias": (1, h), "net_2_weight": (1, h, h), "net_2_bias": (1, h),
              "net_4_weight": (1, o, h), "net_4_bias": (1, o), "net_x_mean": (1, n_in), "net_x_std": (1, n_in),
              "net_y_mean": (1, o), "net_y_std": (1, o), "net_y_spread": (o,)}
    tensors = {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}
    meta = {"format": FORMAT, "version": 1, "method": "ppg-net", "sample_rate": 24000, "frame_period": 5.0,
            "dims": dims, "ppg_phones": phones, "lf0_mean": 5.0, "lf0_std": 0.2, "config": {"ppg_context": [6, 12]}}
    if change is not None:
        change(tensors)
    path = tmp_path / "voice.safetensors"
    VoiceModel(meta, tensors).save(path)
    return path


def test_world_model_layout_is_checked(tmp_path: Path):
    from reenact.voice.world.model import VoiceModel

    VoiceModel.load(_world_model(tmp_path))  # the right layout loads
    wrong = _world_model(tmp_path, lambda t: t.update(net_0_weight=np.zeros((1, 3, 5), np.float32)))
    with pytest.raises(ReenactError, match=r"tensor net_0_weight has shape \(1, 3, 5\)"):
        VoiceModel.load(wrong)
    wrong = _world_model(tmp_path, lambda t: t.update(net_2_weight=np.zeros((1, 8, 9), np.float32)))
    with pytest.raises(ReenactError, match=r"tensor net_2_weight has shape"):
        VoiceModel.load(wrong)


def test_world_model_missing_tensor_blames_the_model(tmp_path: Path):
    model = _world_model(tmp_path, lambda t: t.pop("net_0_weight"))
    speech = tmp_path / "speech.wav"
    sf.write(speech, 0.1 * np.sin(np.arange(16000) * 0.05), 16000)
    result = runner.invoke(app, ["voice", "convert", str(speech), "-m", str(model), "-o", str(tmp_path / "o.wav")])
    one_line_error(result, "voice.safetensors", "net_0_weight")
    assert "speech.wav" not in result.output
    model = _world_model(tmp_path, lambda t: t.update(net_0_weight=np.zeros((1, 3, 5), np.float32)))
    result = runner.invoke(app, ["voice", "convert", str(speech), "-m", str(model), "-o", str(tmp_path / "o.wav")])
    one_line_error(result, "voice.safetensors", "net_0_weight")
    assert not (tmp_path / "o.wav").exists()


def _sovits_model(tmp_path: Path) -> Path:
    from reenact.voice.sovits import content as C

    folder = tmp_path / "model"
    shutil.copytree(FIXTURES / "sovits" / "fork_tiny", folder, ignore=shutil.ignore_patterns("*.npz", "*.npy"))
    C.ContentEncoder.random(hidden=16, proj=8, fold=False).model.save_pretrained(tmp_path / "hubert")
    config = json.loads((folder / "config.json").read_text())
    config["reenact"] = {"content": str(tmp_path / "hubert"), "f0": {"median_hz": 200.0}}
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize("value", [-5, 0, "wide"])
def test_sovits_config_with_a_bad_width(tmp_path: Path, value):
    folder = _sovits_model(tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config["model"]["inter_channels"] = value
    (folder / "config.json").write_text(json.dumps(config))
    speech = tmp_path / "in.wav"
    sf.write(speech, 0.1 * np.sin(np.arange(22050) * 0.05), 22050)
    result = runner.invoke(app, ["voice", "convert", str(speech), "-m", str(folder), "-o", str(tmp_path / "o.wav"),
                                 "--device", "cpu"])
    one_line_error(result, "config.json", "inter_channels")


def test_crafted_content_checkpoint_is_one_line(tmp_path: Path):
    """A pytorch_model.bin whose pickle would run code: refused by weights_only, reported on one line."""
    folder = _sovits_model(tmp_path)
    crafted = tmp_path / "cv"
    shutil.copytree(tmp_path / "hubert", crafted)
    for f in crafted.glob("*.safetensors"):
        f.unlink()

    class Evil:
        def __reduce__(self):
            return (print, ("this must never run",))

    torch.save({"x": Evil()}, crafted / "pytorch_model.bin")
    speech = tmp_path / "in.wav"
    sf.write(speech, 0.1 * np.sin(np.arange(22050) * 0.05), 22050)
    result = runner.invoke(app, ["voice", "convert", str(speech), "-m", str(folder), "-o", str(tmp_path / "o.wav"),
                                 "--device", "cpu", "--content", str(crafted / "pytorch_model.bin")])
    one_line_error(result, "not safe to load")
    assert "this must never run" not in result.output


def test_voice_outputs_checked_before_any_work(tmp_path: Path):
    (tmp_path / "notes.txt").write_text("a file")
    result = runner.invoke(app, ["voice", "train", str(tmp_path), "-o", str(tmp_path / "notes.txt" / "v.safetensors")])
    one_line_error(result, "notes.txt is a file")
    if Path("/proc/self").exists():
        result = runner.invoke(app, ["voice", "train", str(tmp_path), "-o", "/proc/v.safetensors"])
        one_line_error(result, "not writable")
