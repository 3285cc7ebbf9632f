"""LIA backend: checkpoint compatibility, safe loading, parity with the official code, fast path."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
import torch

from reenact.animate import lia
from reenact.animate.base import DriverFrame, SourceFace, create_backend
from reenact.errors import ReenactError

FIXTURE = Path(__file__).parent / "fixtures" / "lia" / "parity.npz"
TINY = lia.LiaConfig(size=32, style_dim=32, motion_dim=5, max_channels=16)


def parity_images(size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """The parity inputs: a source and two driver frames, uint8 RGB made by a formula.

    Channel c of image k at pixel (y, x), with u = x / (size-1), v = y / (size-1), phase p_k
    (source 0.0, drivers 0.15 and 0.4): 255 * (0.5 + 0.45 * sin(2 pi ((1.5 + c) u + (2 - 0.5 c) v + p_k + c / 3)))
    * (1 - 0.3 * ((u - 0.5)^2 + (v - 0.5 - 0.1 p_k)^2)), rounded to uint8.
    """
    v, u = np.mgrid[0:size, 0:size] / (size - 1)

    def image(p: float) -> np.ndarray:
        chans = [0.5 + 0.45 * np.sin(2 * np.pi * ((1.5 + c) * u + (2 - 0.5 * c) * v + p + c / 3))
                 for c in range(3)]
        vignette = 1 - 0.3 * ((u - 0.5) ** 2 + (v - 0.5 - 0.1 * p) ** 2)
        return np.round(255 * np.stack(chans, -1) * vignette[..., None]).astype(np.uint8)

    return image(0.0), np.stack([image(0.15), image(0.4)])


@pytest.fixture(scope="module")
def gen256() -> lia.Generator:
    torch.set_num_threads(2)
    return lia.load_generator("deterministic")


def test_state_dict_layout(gen256):
    sd = gen256.state_dict()
    assert len(sd) == 185
    assert sum(p.numel() for p in gen256.parameters()) == 45_116_317
    assert sd["enc.net_app.convs.1.conv2.1.weight"].shape == (128, 64, 3, 3)
    assert sd["enc.net_app.convs.7.weight"].shape == (512, 512, 4, 4)
    assert sd["enc.fc.4.weight"].shape == (20, 512)
    assert sd["dec.direction.weight"].shape == (512, 20)
    assert sd["dec.conv1.conv.weight"].shape == (1, 512, 512, 3, 3)
    assert sd["dec.to_flows.5.conv.weight"].shape == (1, 3, 64, 1, 1)
    assert sd["dec.to_flows.5.conv.modulation.weight"].shape == (64, 512)
    assert sum(k.endswith("kernel") for k in sd) == 30


def test_direction_basis_matches_reference_qr(gen256):
    w = gen256.dec.direction.weight.detach()
    q_ref = torch.linalg.qr(w + 1e-8)[0]
    if hasattr(torch, "qr"):
        q_ref = torch.qr(w + 1e-8)[0]  # what the official code calls (deprecated alias)
    assert torch.equal(gen256.dec.direction.basis().detach(), q_ref)


def test_parity_with_official(gen256):
    """Outputs of the official code (run once, see tests/fixtures/lia/README.md) within 1e-4."""
    ref = np.load(FIXTURE)
    src, drv = parity_images()
    src_t, drv_t = lia.to_tensor(src[None]), lia.to_tensor(drv)
    with torch.no_grad():
        h_start = gen256.enc.enc_motion(drv_t[:1])
        np.testing.assert_allclose(h_start[0].numpy(), ref["h_start"], atol=1e-4)
        np.testing.assert_allclose(gen256.dec.direction.basis().numpy(), ref["q"], atol=1e-6)
        rel = gen256(src_t, drv_t[1:], h_start)[0].numpy()
        ab = gen256(src_t, drv_t[1:])[0].numpy()
    assert np.abs(rel - ref["relative"]).max() <= 1e-4
    assert np.abs(ab - ref["absolute"]).max() <= 1e-4

    # the fast path: source cached, batch of both frames at once, channels_last
    anim = lia.Animator(gen256)
    anim.set_source(src_t)
    anim.set_reference(drv_t[:1])
    out = anim(drv_t).numpy()
    assert np.abs(out[1] - ref["relative"]).max() <= 1e-4
    anim.set_reference(None)
    out = anim(drv_t[1:]).numpy()
    assert np.abs(out[0] - ref["absolute"]).max() <= 1e-4


@pytest.mark.slow
def test_parity_with_official_float64(gen256):
    """In float64 the same arithmetic agrees to rounding of the stored reference: the maths is the same."""
    ref = np.load(FIXTURE)
    src, drv = parity_images()
    gen = lia.Generator().double().eval()
    gen.load_state_dict(gen256.state_dict())
    with torch.no_grad():
        out = gen(lia.to_tensor(src[None]).double(), lia.to_tensor(drv[1:]).double())[0].numpy()
    assert np.abs(out - ref["absolute"]).max() <= 1e-6


def test_bf16_close_to_fp32():
    torch.manual_seed(0)
    gen = lia.Generator(TINY).eval()
    gen.load_state_dict(lia.deterministic_weights(TINY))
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    outs = []
    for dtype in (torch.float32, torch.bfloat16):
        anim = lia.Animator(gen, dtype=dtype)
        anim.set_source(x[:1])
        anim.set_reference(x[1:2])
        outs.append(anim(x))
    assert outs[1].dtype == torch.float32
    assert (outs[0] - outs[1]).abs().mean() < 0.05 * outs[0].abs().mean() + 1e-3


def test_checkpoint_roundtrip_and_safe_loading(tmp_path):
    gen = lia.Generator(TINY)
    for name in ("g.pt", "g.safetensors"):
        lia.save_generator(gen, tmp_path / name)
        back = lia.load_generator(tmp_path / name)
        assert back.cfg == TINY
        for k, v in gen.state_dict().items():
            assert torch.equal(back.state_dict()[k], v)

    # the official trainer's layout, with a pickled argparse.Namespace under 'args'
    ns = argparse.Namespace(size=32, latent_dim_style=32, lr=0.002, exp_name="v1", max_channels=16)
    torch.save({"gen": gen.state_dict(), "dis": {}, "g_optim": {}, "d_optim": {}, "args": ns}, tmp_path / "o.pt")
    assert lia.load_generator(tmp_path / "o.pt").cfg == TINY

    # an arbitrary object is refused without being unpickled
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"gen": gen.state_dict(), "args": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(ReenactError, match="not safe"):
        lia.load_generator(tmp_path / "evil.pt")

    # truncated file
    data = (tmp_path / "g.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ReenactError, match="truncated"):
        lia.load_generator(tmp_path / "cut.pt")
    for text in ("hello\nworld\n", "some text here\n"):  # text files: the unpickler fails in odd ways
        (tmp_path / "text.pt").write_text(text)
        with pytest.raises(ReenactError, match="not a PyTorch file"):
            lia.load_generator(tmp_path / "text.pt")
    data = (tmp_path / "g.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ReenactError, match="truncated"):
        lia.load_generator(tmp_path / "cut.safetensors")

    # wrong model
    torch.save({"state_dict": torch.nn.Linear(3, 3).state_dict()}, tmp_path / "other.pt")
    with pytest.raises(ReenactError, match="not a LIA generator"):
        lia.load_generator(tmp_path / "other.pt")
    sd = gen.state_dict()
    sd["enc.fc.4.bias"] = torch.zeros(7)
    torch.save({"gen": sd}, tmp_path / "shape.pt")
    with pytest.raises(ReenactError, match="shape"):
        lia.load_generator(tmp_path / "shape.pt")
    with pytest.raises(ReenactError, match="not found"):
        lia.load_generator(tmp_path / "missing.pt")


def test_backend_protocol(tmp_path):
    gen = lia.Generator(TINY)
    lia.save_generator(gen, tmp_path / "tiny.pt")
    rng = np.random.default_rng(0)
    img = lambda: rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)  # noqa: E731
    lm = np.zeros((68, 2), np.float32)
    for motion in ("relative", "absolute"):
        backend = create_backend("lia", size=32, checkpoint=str(tmp_path / "tiny.pt"), motion=motion,
                                 dtype="float32", device="cpu")
        assert backend.needs_driver_images
        backend.prepare(SourceFace(img(), lm), DriverFrame(0, lm, img()))
        out = backend.animate([DriverFrame(i, lm, img()) for i in range(3)])
        assert out.shape == (3, 32, 32, 3) and out.dtype == np.uint8
    with pytest.raises(ReenactError, match="px"):
        create_backend("lia", size=256, checkpoint=str(tmp_path / "tiny.pt"))


def test_to_uint8_clamps():
    x = torch.tensor([-2.0, -1.0, 0.0, 1.0, 3.0]).view(1, 1, 1, 5).expand(1, 3, 1, 5)
    assert lia.to_uint8(x)[0, 0, :, 0].tolist() == [0, 0, 128, 255, 255]


@pytest.mark.slow
def test_animate_cli_end_to_end(tmp_path):
    """`reenact animate --backend lia` on two seconds of a real driver with sound: a complete MP4 with audio."""
    import shutil
    import subprocess

    from conftest import shared
    from typer.testing import CliRunner

    from reenact.cli import app
    from reenact.media.video import probe

    driver = shared("drivers", "vox_driving2.mp4")
    portrait = shared("portraits", "macron.png")
    if shutil.which("ffmpeg") is None:
        pytest.skip("needs the ffmpeg CLI to cut a short clip")
    clip = tmp_path / "clip.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(driver), "-t", "2", "-c", "copy", str(clip)], check=True)
    cfg = lia.LiaConfig(size=256, style_dim=64, motion_dim=10, max_channels=16)  # tiny, deterministic
    gen = lia.Generator(cfg)
    gen.load_state_dict(lia.deterministic_weights(cfg))
    lia.save_generator(gen, tmp_path / "tiny.safetensors")
    out = tmp_path / "out.mp4"
    res = CliRunner().invoke(app, ["animate", str(portrait), str(clip), "-o", str(out), "--backend", "lia",
                                   "--checkpoint", str(tmp_path / "tiny.safetensors")])
    assert res.exit_code == 0, res.output
    info, ref = probe(out), probe(clip)
    assert abs(info.frame_count - ref.frame_count) <= 1 and info.fps == ref.fps and info.has_audio
