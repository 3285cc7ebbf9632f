"""The ppg-net spectral conversion: augmentation by frequency warping, training, the numpy forward pass."""

import numpy as np

from reenact.voice.world import analysis as F
from reenact.voice.world import ppgnet as ppgnet

FS, BINS = 24000, 513


def toy_pool(n_clips: int = 6, frames: int = 120, seed: int = 0):
    rng = np.random.default_rng(seed)
    n = n_clips * frames
    mc = rng.normal(0, 0.3, (n, 40)).astype(np.float32)
    mc[:, 0] -= 5
    ap = rng.normal(-5, 1, (n, 3)).astype(np.float32)
    post = rng.dirichlet(np.ones(40), n).astype(np.float32)
    voiced = rng.random(n) < 0.7
    clip = np.repeat(np.arange(n_clips), frames).astype(np.int32)
    return mc, ap, post, voiced, clip


def test_warp_matrix_moves_formants():
    cep = F.cepstrum(FS, BINS, 40)
    hz = np.arange(BINS) * FS / 2 / (BINS - 1)
    sp = np.exp(-((hz - 1000) / 150) ** 2 * 2)[None] + 1e-3  # one formant at 1 kHz
    mc = cep.encode(sp)
    for ratio in (0.8, 1.2):
        peak = hz[np.argmax(cep.decode(mc @ ppgnet.warp_matrix(cep, ratio))[0])]
        assert abs(peak - 1000 * ratio) < 60
    np.testing.assert_allclose(mc @ ppgnet.warp_matrix(cep, 1.0), cep.encode(cep.decode(mc)), atol=1e-6)


def test_normalised_cepstra_per_segment():
    mc, _, _, _, clip = toy_pool()
    mc[clip == 1] *= 5
    n = ppgnet.normalised_cepstra(mc, clip)
    assert n.shape == (len(mc), ppgnet.CEP_DIMS - 1)
    for c in np.unique(clip):
        np.testing.assert_allclose(n[clip == c].mean(axis=0), 0, atol=1e-4)
        np.testing.assert_allclose(n[clip == c].std(axis=0), 1, atol=1e-2)


def test_training_is_deterministic_and_numpy_matches_torch():
    import torch

    cep = F.cepstrum(FS, BINS, 40)
    cfg = ppgnet.NetConfig(nets=2, hidden=16, epochs=2, batch=64)
    a = ppgnet.train(*toy_pool(), cep, cfg)
    b = ppgnet.train(*toy_pool(), cep, cfg)
    assert a.keys() == b.keys() and a["net_0_weight"].shape[0] == 2
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])  # the two members train on two threads
    assert not np.array_equal(a["net_0_weight"][0], a["net_0_weight"][1])  # each member its own seed
    mc, _, post, voiced, _ = toy_pool()
    x = ppgnet.inputs(ppgnet.normalised_cepstra(mc), post, voiced)
    want = 0
    for m in range(2):
        net = torch.nn.Sequential(torch.nn.Linear(x.shape[1], 16), torch.nn.GELU(), torch.nn.Linear(16, 16),
                                  torch.nn.GELU(), torch.nn.Linear(16, 42))
        net.load_state_dict({k: torch.from_numpy(a[f"net_{k.replace('.', '_')}"][m]) for k in net.state_dict()})
        with torch.no_grad():
            h = torch.from_numpy((x - a["net_x_mean"][m]) / a["net_x_std"][m])
            want = want + net(h).numpy() * a["net_y_std"][m] + a["net_y_mean"][m]
    np.testing.assert_allclose(ppgnet.forward(a, x), want / 2, rtol=1e-4, atol=1e-4)
    rows = np.flatnonzero(np.arange(len(mc)) % 3 == 1)  # conversion builds only the rows it needs
    np.testing.assert_array_equal(ppgnet.inputs(ppgnet.normalised_cepstra(mc), post, voiced, rows=rows), x[rows])


def test_convert_rows_and_global_variance():
    cep = F.cepstrum(FS, BINS, 40)
    t = ppgnet.train(*toy_pool(), cep, ppgnet.NetConfig(nets=1, hidden=16, epochs=1, batch=64))
    mc, _, post, voiced, _ = toy_pool(n_clips=1, frames=200, seed=3)
    speech = np.ones(len(mc), bool)
    speech[:30] = False
    y0 = ppgnet.convert(t, mc, post, voiced, speech, gv=0.0)
    assert y0.shape == (170, 42) and np.isfinite(y0).all()
    y1 = ppgnet.convert(t, mc, post, voiced, speech, gv=1.0)
    want = np.minimum(t["net_y_spread"], 3 * y0.std(axis=0))
    np.testing.assert_allclose(y1.std(axis=0), want, rtol=1e-3)
    np.testing.assert_allclose(y1.mean(axis=0), y0.mean(axis=0), atol=1e-6)

