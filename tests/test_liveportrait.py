"""LivePortrait backend: official layout and safe loading, parity with the official code, the backend.

Parity fixture (tests/fixtures/liveportrait/parity.npz), made once in a scratch environment, not in this
repository: the official code (KwaiVGI/LivePortrait at 1986663, `src/modules/*`, `LivePortraitWrapper`)
built from `src/config/models.yaml`; every tensor of every network set by
`liveportrait.deterministic_value(name)` (crc32 of the state-dict name seeds torch.randn; scales in its
docstring); inputs from `parity_inputs()` below; float32 on a CPU, torch 2.13. It holds the official
outputs: the source's and driver frames' keypoint info (`get_kp_info`), x_s, the feature volume f_s
(subsampled), the driving keypoints of the frame loop of `LivePortraitPipeline.execute` (image source,
video driver, relative motion; the loop transcribed from the official code for the wrapper calls) for
stitching on/off, eye+lip retargeting on/off, lip normalisation off, driving_multiplier 0.7 and each
animation_region; and for three of those the warped feature, occlusion map, deformation and final image
(every 8th pixel, a full-resolution 32x32 patch, the channel means); and the official `smooth()` (pykalman)
on a fixed sequence. The eye and lip ratios are given as numbers (the official code measures them on its
203-point landmarks, we on 68 points).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from reenact.animate import liveportrait as lp
from reenact.errors import ReenactError

FIXTURE = Path(__file__).parent / "fixtures" / "liveportrait" / "parity.npz"
TOL = 1e-4


def parity_inputs(size: int = 256) -> tuple[np.ndarray, np.ndarray, dict]:
    """A source and three driver frames (uint8 RGB, made by a formula) and the eye/lip ratios.

    Channel c of image k at (y, x), u = x / (size-1), v = y / (size-1), phase p_k (source 0, drivers 0.1, 0.3, 0.6):
    255 * (0.5 + 0.45 sin(2 pi ((1.5 + c) u + (2 - 0.5 c) v + p_k + c / 3))) * (1 - 0.3 ((u - 0.5)^2 + (v - 0.5 - 0.1 p_k)^2)).
    """
    v, u = np.mgrid[0:size, 0:size] / (size - 1)

    def image(p: float) -> np.ndarray:
        chans = [0.5 + 0.45 * np.sin(2 * np.pi * ((1.5 + c) * u + (2 - 0.5 * c) * v + p + c / 3)) for c in range(3)]
        vignette = 1 - 0.3 * ((u - 0.5) ** 2 + (v - 0.5 - 0.1 * p) ** 2)
        return np.round(255 * np.stack(chans, -1) * vignette[..., None]).astype(np.uint8)

    ratios = {"source_eyes": [0.31, 0.29], "source_lip": 0.12, "driver_eye": [0.30, 0.12, 0.35],
              "driver_lip": [0.05, 0.4, 0.2]}
    return image(0.0), np.stack([image(0.1), image(0.3), image(0.6)]), ratios


@pytest.fixture(scope="module")
def model() -> lp.LivePortrait:
    torch.set_num_threads(2)
    return lp.load_folder("deterministic")


@pytest.fixture(scope="module")
def ref() -> dict:
    return dict(np.load(FIXTURE))


def animator(model, **options) -> lp.Animator:
    src, drv, ratios = parity_inputs()
    a = lp.Animator(model, lp.MotionOptions(**options))
    a.set_source(lp.to_tensor([src]), ratios["source_eyes"], ratios["source_lip"])
    a.set_reference(lp.to_tensor(drv[:1]))
    return a


def test_layout_matches_official(model):
    parts = model.parts()
    counts = {k: len(m.state_dict()) for k, m in parts.items()}
    assert counts == {"appearance_feature_extractor": 107, "motion_extractor": 212, "warping_module": 97,
                      "spade_generator": 182, "stitching": 8, "lip": 8, "eye": 12}
    params = {k: sum(p.numel() for p in m.parameters()) for k, m in parts.items()}
    assert params["motion_extractor"] == 28_118_728 and params["spade_generator"] == 55_365_388
    assert params["warping_module"] == 45_529_829 and params["appearance_feature_extractor"] == 836_224
    sd = parts["spade_generator"].state_dict()
    assert sd["G_middle_0.conv_0.weight_orig"].shape == (512, 512, 3, 3)
    assert sd["up_1.conv_s.weight_u"].shape == (64,) and "conv_img.0.weight" in sd
    assert parts["motion_extractor"].state_dict()["detector.stages.2.8.grn.gamma"].shape == (1, 1, 1, 1536)


def test_keypoints_match_official(model, ref):
    src, drv, _ = parity_inputs()
    a = animator(model)
    s = a.source["info"]
    for k in ("pitch", "yaw", "roll", "t", "exp", "scale", "kp"):
        np.testing.assert_allclose(getattr(s, k).numpy(), ref[f"source_{k}"], atol=TOL, err_msg=k)
    np.testing.assert_allclose(a.source["x_s"].numpy(), ref["x_s"], atol=TOL)
    np.testing.assert_allclose(a.source["f_s"][0, ::4, ::4, ::8, ::8].numpy(), ref["f_s"], atol=TOL)
    d = a.motion(lp.to_tensor(drv))
    for k in ("pitch", "yaw", "roll", "t", "exp", "scale", "kp"):
        np.testing.assert_allclose(getattr(d, k).numpy(), ref[f"driver_{k}"], atol=TOL, err_msg=k)


CONFIGS = {"default": {}, "no_stitching": dict(stitching=False),
           "retarget": dict(eye_retargeting=True, lip_retargeting=True),
           "retarget_no_stitching": dict(stitching=False, eye_retargeting=True, lip_retargeting=True),
           "no_normalize_lip": dict(normalize_lip=False), "multiplier": dict(multiplier=0.7),
           **{f"region_{r}": dict(region=r) for r in ("exp", "pose", "lip", "eyes")}}


@pytest.fixture(scope="module")
def prepared(model) -> tuple[lp.Animator, lp.KpInfo]:
    """The source, reference and driver frames through the networks once, for every option below."""
    _, drv, _ = parity_inputs()
    a = animator(model)
    return a, a.motion(lp.to_tensor(drv))


@pytest.mark.parametrize("name", list(CONFIGS))
def test_driving_keypoints_match_official(model, ref, prepared, name):
    """Every option of the frame loop, on the whole driver at once (batched), against the official per-frame loop."""
    _, _, ratios = parity_inputs()
    base, drv = prepared
    a = lp.Animator(model, lp.MotionOptions(**CONFIGS[name]))
    a.source, a.reference = base.source, base.reference  # lip_delta is only used when normalize_lip is on
    x_d = a.driving_keypoints(drv, ratios["driver_eye"], ratios["driver_lip"])
    np.testing.assert_allclose(x_d.numpy(), ref[f"x_d_{name}"], atol=TOL)


def _check_image(model, ref, name):
    a = animator(model)
    x_d = torch.from_numpy(ref[f"x_d_{name}"][-1:])
    with torch.inference_mode():
        ret = a.model.warping_module(a.source["f_s"], kp_driving=x_d, kp_source=a.source["x_s"])
        warped = ret["out"]
        img = a.model.spade_generator(warped)
    assert np.abs(warped[0, ::4, ::4, ::4].numpy() - ref[f"warped_{name}"]).max() <= TOL
    assert np.abs(ret["occlusion_map"][0, 0, ::4, ::4].numpy() - ref[f"occlusion_{name}"]).max() <= TOL
    assert np.abs(ret["deformation"][0, ::4, ::8, ::8].numpy() - ref[f"deformation_{name}"]).max() <= TOL
    assert abs(float(warped.mean()) - float(ref[f"warped_{name}_mean"])) <= 1e-5
    assert np.abs(img[0, :, ::8, ::8].numpy() - ref[f"image_{name}"]).max() <= TOL
    assert np.abs(img[0, :, 240:272, 240:272].numpy() - ref[f"image_{name}_patch"]).max() <= TOL
    assert np.abs(img.mean((2, 3))[0].numpy() - ref[f"image_{name}_mean"]).max() <= 1e-5
    # the fast path (spectral norm baked, channels_last, chunked batch) gives the same image
    fast = a.warp_decode(x_d)["out"]
    assert (fast - img).abs().max() <= TOL


def test_image_matches_official(model, ref):
    """Warped feature, occlusion, deformation and the 512 px image with stitching on (the default)."""
    _check_image(model, ref, "default")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["no_stitching", "retarget"])
def test_image_matches_official_other_options(model, ref, name):
    _check_image(model, ref, name)


@pytest.mark.parametrize("var", [3e-7, 1e-4])
def test_kalman_matches_official_smooth(ref, var):
    seq = ref["kalman_in"]
    out = lp.KalmanSmoother(var).smooth(seq)
    np.testing.assert_allclose(out, ref[f"kalman_out_{var:g}"][:, 0], atol=1e-6)


# ----------------------------------------------------------------------------- the official folder and the CLI


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    """Random weights made with our module classes, saved as the official folder (`module.` keys and all)."""
    folder = tmp_path_factory.mktemp("liveportrait")
    model = lp.LivePortrait()
    torch.manual_seed(0)
    with torch.no_grad():  # random, but sane: the deterministic formula, then a random jitter
        lp.fill_deterministic(model)
        for p in model.parameters():
            p.mul_(1 + 0.05 * torch.randn_like(p))
    return lp.save_folder(model, folder)


def test_official_folder_loads_strictly_and_safely(weights):
    obj = torch.load(weights / lp.RETARGETING_FILE, weights_only=True)
    assert set(obj) == {"retarget_shoulder", "retarget_mouth", "retarget_eye"}
    assert all(k.startswith("module.mlp.") for part in obj.values() for k in part)
    base = torch.load(weights / lp.BASE_FILES["motion_extractor"], weights_only=True)
    assert "detector.fc_kp.weight" in base
    model = lp.load_folder(weights)
    saved = torch.load(weights / lp.BASE_FILES["spade_generator"], weights_only=True)
    assert torch.equal(model.spade_generator.state_dict()["up_1.conv_s.weight_orig"], saved["up_1.conv_s.weight_orig"])


def _link_folder(src: Path, dst: Path) -> Path:
    for rel in [*lp.BASE_FILES.values(), lp.RETARGETING_FILE]:
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        (dst / rel).symlink_to(src / rel)
    return dst


class _Evil:
    def __reduce__(self):
        return (print, ("this would run code",))


def _run(*args: str):
    from typer.testing import CliRunner

    from reenact.cli import app

    return CliRunner().invoke(app, list(args))


@pytest.mark.parametrize("fault", ["missing", "shape", "pickle", "not_a_dict"])
def test_wrong_folder_is_one_line_exit_2(weights, tmp_path, example_portrait, example_driver, fault):
    bad = _link_folder(weights, tmp_path / "bad")
    if fault == "missing":
        path = bad / lp.RETARGETING_FILE
        path.unlink()
    elif fault == "shape":
        path = bad / lp.BASE_FILES["appearance_feature_extractor"]
        state = torch.load(weights / lp.BASE_FILES["appearance_feature_extractor"], weights_only=True)
        state["second.weight"] = torch.zeros(512, 128, 1, 1)
        path.unlink()
        torch.save(state, path)
    elif fault == "pickle":
        path = bad / lp.BASE_FILES["warping_module"]
        path.unlink()
        torch.save({"x": _Evil()}, path)
    else:
        path = bad / lp.BASE_FILES["spade_generator"]
        path.unlink()
        torch.save([torch.zeros(1)], path)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    result = _run("animate", str(example_portrait), str(example_driver), "-o", str(out_dir / "o.mp4"),
                  "--backend", "liveportrait", "--checkpoint", str(bad))
    assert result.exit_code == 2, result.output
    text = result.output.strip()
    assert len(text.splitlines()) == 1 and "Traceback" not in text and str(path) in text, text
    assert "this would run code" not in result.output
    assert list(out_dir.iterdir()) == []


def test_offline_says_where_to_put_the_files(monkeypatch, tmp_path):
    from reenact import models

    monkeypatch.setenv("REENACT_CACHE", str(tmp_path))
    with pytest.raises(ReenactError, match="models fetch liveportrait") as err:
        models.resolve_liveportrait(None)
    assert "huggingface.co/KwaiVGI/LivePortrait" in str(err.value)
    assert models.model_path("liveportrait") == tmp_path / "models" / "liveportrait"
    assert models.model_path("liveportrait-spade") == tmp_path / "models" / "liveportrait" / lp.BASE_FILES[
        "spade_generator"]
    listed = _run("models", "list")
    assert "liveportrait-motion" in listed.output and "MIT" in listed.output


def _short_driver(example_driver: Path, path: Path, frames: int = 3) -> Path:
    import av

    with av.open(str(example_driver)) as src, av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=25)
        for i, frame in enumerate(src.decode(video=0)):
            if i == frames:
                break
            if i == 0:
                stream.width, stream.height, stream.pix_fmt = frame.width, frame.height, "yuv420p"
            for p in stream.encode(frame):
                out.mux(p)
        for p in stream.encode():
            out.mux(p)
    return path


@pytest.mark.slow
def test_animate_and_make_with_official_folder(weights, tmp_path, example_portrait, example_driver):
    """The official layout runs through `reenact animate --backend liveportrait` and `reenact make` unchanged."""
    import av

    driver = _short_driver(example_driver, tmp_path / "drv.mp4")
    out = tmp_path / "anim.mp4"
    result = _run("animate", str(example_portrait), str(driver), "-o", str(out), "--backend", "liveportrait",
                  "--checkpoint", str(weights), "--motion", "expression", "--smooth", "1e-6")
    assert result.exit_code == 0, result.output
    with av.open(str(out)) as c:
        assert c.streams.video[0].frames == 3
    consent = tmp_path / "consent.txt"
    consent.write_text("I agree to the synthesis of my likeness for research. Signed: Test Subject")
    root = tmp_path / "subjects"
    from reenact.subject import create_subject

    create_subject("bob", example_portrait, consent, root=root, signer="Bob B.")  # portrait only: no voice model
    out = tmp_path / "made.mp4"
    result = _run("make", "--subject", "bob", "--driver", str(driver), "-o", str(out), "--backend", "liveportrait",
                  "--checkpoint", str(weights), "--no-measure", "--subjects-dir", str(root))
    assert result.exit_code == 0, result.output
    import json

    report = json.loads(out.with_suffix(".json").read_text())
    assert report["backends"]["motion"] == "liveportrait" and report["settings"]["size"] == 512
