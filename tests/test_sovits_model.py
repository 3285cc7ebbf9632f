"""so-vits-svc 4.x generator: key/shape compatibility with so-vits-svc-fork, checkpoints, parity.

Fixtures in tests/fixtures/sovits/ were produced once by so-vits-svc-fork 4.2.30 in a scratch
environment (none of its code is here):
  keys_768.json, keys_256.json  its SynthesizerTrn state-dict keys and shapes, in order, for the
                                so-vits-svc-4.0v1 and -legacy templates;
  fork_tiny/                    a tiny random model saved by its utils.save_checkpoint (with AdamW
                                state after one step), its config.json, its infer output, and
                                init_seed1234.npy, its initial weights after torch.manual_seed(1234);
  parity.npz                    its infer output for both templates with the weights of
                                sovits.deterministic_state_dict(model, 0), fixed inputs and seed.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from reenact.errors import ReenactError
from reenact.voice.sovits import model as sovits

FIXTURES = Path(__file__).parent / "fixtures" / "sovits"
TOL = 5e-4  # parity tolerance on audio in [-1, 1]; measured max |diff| ~1e-6 (float32), ~1e-4 (float64)


@pytest.fixture(scope="module", params=[False, True], ids=["768", "256-legacy"])
def full_model(request):
    model = sovits.build_generator(sovits.config_template(legacy=request.param)).eval()
    model.load_state_dict(sovits.deterministic_state_dict(model, 0))
    return request.param, model


@pytest.fixture(scope="module")
def parity():
    return dict(np.load(FIXTURES / "parity.npz"))


def tiny_model() -> tuple[dict, sovits.SynthesizerTrn]:
    config = sovits.load_config(FIXTURES / "fork_tiny" / "config.json")
    return config, sovits.build_generator(config)


def test_state_dict_keys_and_shapes_match_fork(full_model):
    legacy, model = full_model
    expected = json.loads((FIXTURES / ("keys_256.json" if legacy else "keys_768.json")).read_text())
    ours = [[k, list(v.shape)] for k, v in model.state_dict().items()]
    assert ours == expected  # same keys, shapes and order (order matters for optimizer state)
    assert sum(p.numel() for p in model.parameters()) == (45_157_133 if legacy else 45_648_653)


def test_parity_with_fork(full_model, parity):
    legacy, model = full_model
    dim = 256 if legacy else 768
    c = torch.from_numpy(parity[f"c{dim}"])
    f0, uv = torch.from_numpy(parity["f0"]), torch.from_numpy(parity["uv"])
    sid = torch.from_numpy(parity["sid"]).long()
    for predict_f0 in (False, True):
        expected = parity[f"audio{dim}" + ("_predict_f0" if predict_f0 else "")]
        torch.manual_seed(int(parity["seed"]))
        with torch.inference_mode():
            audio = model.infer(c, f0, uv, g=sid, noice_scale=float(parity["noise_scale"]), predict_f0=predict_f0)
        assert audio.shape == (1, 1, expected.size)
        diff = np.abs(audio[0, 0].numpy() - expected).max()
        assert diff < TOL, f"max |diff| {diff:.2e} (predict_f0={predict_f0})"


def test_parity_holds_in_float64(full_model, parity, monkeypatch):
    """The fixture is well conditioned: a float64 run (noise drawn in float32 so the values are the
    same) stays within tolerance of the fork's float32 output, with the predicted F0 too."""
    legacy, model = full_model
    dim = 256 if legacy else 768
    model = model.double()  # the float32 formula weights, exactly
    try:
        randn = torch.randn
        monkeypatch.setattr(torch, "randn", lambda *size, dtype=None, **kw:
                            randn(*size, dtype=torch.float32, **kw).to(dtype or torch.float32))
        torch.manual_seed(int(parity["seed"]))
        with torch.inference_mode():
            audio = model.infer(torch.from_numpy(parity[f"c{dim}"]).double(), torch.from_numpy(parity["f0"]).double(),
                                torch.from_numpy(parity["uv"]).double(), g=torch.zeros(1, 1, dtype=torch.long),
                                noice_scale=float(parity["noise_scale"]), predict_f0=True)
        diff = np.abs(audio[0, 0].numpy() - parity[f"audio{dim}_predict_f0"]).max()
        assert diff < 2 * TOL, f"float64 max |diff| {diff:.2e}"
    finally:
        model.float()


def test_fork_checkpoint_loads_unchanged_and_converts():
    path = FIXTURES / "fork_tiny" / "G_1.pth"
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    config, model = tiny_model()
    optimizer = torch.optim.AdamW(model.parameters(), 1e-4, betas=(0.8, 0.99), eps=1e-9)
    model, optimizer, lr, iteration = sovits.load_checkpoint(path, model, optimizer)
    assert (lr, iteration) == (1e-4, 1)
    saved = torch.load(path, map_location="cpu", weights_only=True)
    assert all(torch.equal(v, saved["model"][k]) for k, v in model.state_dict().items())
    assert len(optimizer.state) == len(list(model.parameters()))
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest

    expected = np.load(FIXTURES / "fork_tiny" / "expected.npz")  # the fork's infer on this checkpoint
    torch.manual_seed(7)
    with torch.inference_mode():
        audio = model.eval().infer(torch.from_numpy(expected["c"]), torch.from_numpy(expected["f0"]),
                                   torch.from_numpy(expected["uv"]), g=torch.tensor([[1]]), predict_f0=True)
    assert np.abs(audio.numpy() - expected["audio"]).max() < TOL


def test_save_load_roundtrip_is_atomic_and_strict(tmp_path):
    config, model = tiny_model()
    optimizer = torch.optim.AdamW(model.parameters(), 2e-4)
    path = tmp_path / "G_5.pth"
    sovits.save_checkpoint(model, optimizer, 2e-4, 5, path)
    assert [p.name for p in tmp_path.iterdir()] == ["G_5.pth"]
    raw = torch.load(path, weights_only=True)
    assert set(raw) == {"model", "iteration", "optimizer", "learning_rate"}

    _, other = tiny_model()
    _, _, lr, iteration = sovits.load_checkpoint(path, other)
    assert (lr, iteration) == (2e-4, 5)
    assert all(torch.equal(v, other.state_dict()[k]) for k, v in model.state_dict().items())

    bigger = sovits.build_generator({**config, "model": {**config["model"], "n_speakers": 3}})
    with pytest.raises(ReenactError, match=r"wrong shape: emb_g.weight") as info:
        sovits.load_checkpoint(path, bigger)
    assert info.value.path == path

    truncated = tmp_path / "G_cut.pth"
    truncated.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(ReenactError, match="not a readable") as info:
        sovits.load_checkpoint(truncated, other)
    assert info.value.path == truncated
    with pytest.raises(ReenactError, match="not found"):
        sovits.load_checkpoint(tmp_path / "missing.pth", other)

    class Evil:
        def __reduce__(self):
            return (print, ("code ran",))

    evil = tmp_path / "evil.pth"
    torch.save({"model": Evil()}, evil)
    with pytest.raises(ReenactError, match="not a readable"):
        sovits.load_checkpoint(evil, other)

    numpy_values = tmp_path / "G_numpy.pth"  # numpy scalars, as some older trainers stored them
    torch.save({**raw, "iteration": np.int64(5), "learning_rate": np.float64(2e-4)}, numpy_values)
    _, _, lr, iteration = sovits.load_checkpoint(numpy_values, other)
    assert (lr, iteration) == (2e-4, 5) and type(lr) is float and type(iteration) is int

    bare = tmp_path / "bare.pth"
    torch.save(model.state_dict(), bare)
    with pytest.raises(ReenactError, match="no 'model'"):
        sovits.load_checkpoint(bare, other)


def test_inference_only_export_loads_for_inference(tmp_path):
    """so-vits-svc's compress_model.py drops enc_q.* (and may halve); such files load for conversion only."""
    _, model = tiny_model()
    saved = torch.load(FIXTURES / "fork_tiny" / "G_1.pth", weights_only=True)
    stripped = {k: v.half() for k, v in saved["model"].items() if "enc_q" not in k}
    path = tmp_path / "G_compressed.pth"
    torch.save({"model": stripped, "iteration": 0, "optimizer": None, "learning_rate": 1e-4}, path)
    with pytest.raises(ReenactError, match="missing: enc_q"):
        sovits.load_checkpoint(path, model)
    sovits.load_checkpoint(path, model, for_inference=True)
    assert torch.equal(model.dec.conv_pre.weight_v, saved["model"]["dec.conv_pre.weight_v"].half().float())
    stripped.pop("emb_uv.weight")
    torch.save({"model": stripped, "iteration": 0, "optimizer": None, "learning_rate": 1e-4}, path)
    with pytest.raises(ReenactError, match="missing: emb_uv.weight"):
        sovits.load_checkpoint(path, model, for_inference=True)


def test_training_forward_and_backward():
    config, model = tiny_model()
    model.train()
    b, t = 2, 30
    spec_channels = config["data"]["filter_length"] // 2 + 1
    lengths = torch.tensor([30, 24])
    out = model(torch.randn(b, 16, t), 150 + 50 * torch.rand(b, t), (torch.rand(b, t) > 0.2).float(),
                torch.rand(b, spec_channels, t), g=torch.tensor([[0], [1]]), c_lengths=lengths, spec_lengths=lengths)
    audio, audio_mb, ids, spec_mask, (z, z_p, m_p, logs_p, m_q, logs_q), pred_lf0, norm_lf0, lf0 = out
    segment = config["train"]["segment_size"] // config["data"]["hop_length"]
    assert audio.shape == (b, 1, segment * 512) and audio_mb is None
    assert ids.shape == (b,) and int(ids[1]) <= 24 - segment
    assert spec_mask.shape == (b, 1, t) and spec_mask[1, 0, 24:].sum() == 0
    assert z.shape == z_p.shape == m_p.shape == (b, config["model"]["inter_channels"], t)
    assert pred_lf0.shape == norm_lf0.shape == lf0.shape == (b, 1, t)
    (audio.abs().mean() + pred_lf0.pow(2).mean() + z_p.pow(2).mean()).backward()
    assert model.f0_decoder.proj.weight.grad is not None and model.dec.conv_post.weight_v.grad is not None
    assert model.enc_q.pre.weight.grad is not None


def test_helpers():
    coarse = sovits.f0_to_coarse(torch.tensor([0.0, 30.0, 50.0, 440.0, 1100.0, 5000.0]))
    assert coarse.tolist()[:3] == [1, 1, 1] and coarse[3] > 1 and coarse.tolist()[4:] == [255, 255]
    x = torch.arange(24.0).view(2, 3, 4)
    starts = torch.tensor([0, 2])
    assert torch.equal(sovits.slice_segments(x, starts, 2), torch.stack([x[0, :, 0:2], x[1, :, 2:4]]))
    lf0 = torch.tensor([[[1.0, 2.0, 3.0, 9.0]]])
    uv, mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]]), torch.ones(1, 1, 4)
    assert torch.allclose(sovits.normalize_f0(lf0, mask, uv, random_scale=False), lf0 - 2.0)
    scaled = sovits.normalize_f0(lf0, mask, uv)  # training: (lf0 - mean) * U(0.8, 1.2)
    factor = scaled[0, 0, 0] / -1.0
    assert 0.8 <= factor <= 1.2 and torch.allclose(scaled, (lf0 - 2.0) * factor)
    assert sovits.sequence_mask(torch.tensor([1, 3]), 3).tolist() == [[True, False, False], [True, True, True]]


def test_inference_mode_and_weight_norm_removal(tmp_path):
    _, model = tiny_model()
    model.load_state_dict(sovits.deterministic_state_dict(model, 3))
    model.eval()
    c, f0, uv, g = torch.randn(1, 16, 12), torch.full((1, 12), 200.0), torch.ones(1, 12), torch.tensor([[0]])
    torch.manual_seed(0)
    with torch.no_grad():
        reference = model.infer(c, f0, uv, g=g)
    torch.manual_seed(0)
    with torch.inference_mode():
        assert torch.equal(model.infer(c, f0, uv, g=g), reference)
    model.remove_weight_norm()
    assert not any(k.endswith("weight_g") for k in model.state_dict())
    torch.manual_seed(0)
    with torch.inference_mode():
        assert torch.allclose(model.infer(c, f0, uv, g=g), reference, atol=1e-5)
    with pytest.raises(ValueError):
        sovits.save_checkpoint(model, None, 1e-4, 0, tmp_path / "G_0.pth")


def test_unsupported_decoder_and_bad_config(tmp_path):
    config = sovits.config_template()
    with pytest.raises(ReenactError, match="not supported"):
        sovits.build_generator({**config, "model": {**config["model"], "type_": "ms-istft"}})
    bad = tmp_path / "config.json"
    bad.write_text("{not json")
    with pytest.raises(ReenactError, match="JSON") as info:
        sovits.load_config(bad)
    assert info.value.path == bad
    bad.write_text('{"model": {}}')
    with pytest.raises(ReenactError, match="needs 'train'"):
        sovits.load_config(bad)


def test_batched_infer_with_lengths_matches_single(monkeypatch):
    _, model = tiny_model()
    model.load_state_dict(sovits.deterministic_state_dict(model, 1))
    model.eval()
    # no noise and no random initial phases, so that a batch row and a single run can be compared
    t, short = 16, 11
    c, f0, uv = torch.randn(2, 16, t), torch.full((2, t), 180.0), torch.ones(2, t)
    zeros = torch.zeros
    monkeypatch.setattr(torch, "randn", lambda *shape, generator=None, **kw: zeros(*shape, **kw))
    monkeypatch.setattr(torch, "rand", lambda *shape, generator=None, **kw: zeros(*shape, **kw))
    c[1, :, short:], uv[1, short:] = 0, 0  # padding: zero content, unvoiced
    with torch.inference_mode():
        batch = model.infer(c, f0, uv, g=torch.tensor([[0], [1]]), c_lengths=torch.tensor([t, short]))
        single = model.infer(c[1:, :, :short], f0[1:, :short], uv[1:, :short], g=torch.tensor([[1]]))
    keep = (short - 4) * model.hop_length  # all but the decoder's receptive field at the end agrees
    assert torch.allclose(batch[1, :, :keep], single[0, :, :keep], atol=1e-5)


def test_seeded_init_equals_forks():
    """Built after torch.manual_seed(1234), the tiny model starts from the fork's initial weights
    (init_seed1234.npy: its SynthesizerTrn's state dict, flattened in order)."""
    config = sovits.load_config(FIXTURES / "fork_tiny" / "config.json")
    torch.manual_seed(1234)
    model = sovits.build_generator(config)
    ours = torch.cat([v.flatten() for v in model.state_dict().values()]).numpy()
    expected = np.load(FIXTURES / "fork_tiny" / "init_seed1234.npy")
    assert ours.shape == expected.shape and np.abs(ours - expected).max() < 1e-6


def test_infer_with_a_generator_equals_the_global_seed(full_model, parity):
    """Chunks converted in parallel threads draw from their own generator: same audio as a global seed."""
    legacy, model = full_model
    dim = 256 if legacy else 768
    args = (torch.from_numpy(parity[f"c{dim}"]), torch.from_numpy(parity["f0"]), torch.from_numpy(parity["uv"]))
    with torch.inference_mode():
        torch.manual_seed(7)
        a = model.infer(*args, g=torch.zeros(1, 1, dtype=torch.long))
        b = model.infer(*args, g=torch.zeros(1, 1, dtype=torch.long), generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b)
