"""so-vits-svc conversion: chunking, determinism, odd inputs, CLI, and `reenact make` with a sovits subject.

Uses the tiny so-vits-svc-fork checkpoint in fixtures/sovits/fork_tiny (made by the fork's own code) and a
tiny random HuBERT in place of ContentVec, so no weights are downloaded.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import needs_crepe
from typer.testing import CliRunner

from reenact.cli import app
from reenact.errors import ReenactError
from reenact.voice.convert import convert_voice, detect_backend
from reenact.voice.sovits import content as C
from reenact.voice.sovits.infer import ConvertConfig, SovitsVoice, plan_chunks, split_chunks

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: extra threads only contend
FORK_TINY = Path(__file__).parent / "fixtures" / "sovits" / "fork_tiny"
SR = 44100
runner = CliRunner()


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    """fork_tiny copied, with the tiny HuBERT recorded as its content encoder (as training records ContentVec)."""
    folder = tmp_path / "model"
    shutil.copytree(FORK_TINY, folder, ignore=shutil.ignore_patterns("*.npz"))
    C.ContentEncoder.random(hidden=16, proj=8, fold=False).model.save_pretrained(tmp_path / "hubert")
    config = json.loads((folder / "config.json").read_text())
    config["reenact"] = {"content": str(tmp_path / "hubert"), "f0": {"median_hz": 200.0}}
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def speech_like(seconds: float, sr: int = SR, pause_every: float = 1.5) -> np.ndarray:
    """A harmonic 'voice' gliding around 120 Hz, with 0.3 s pauses of faint noise."""
    t = np.arange(int(seconds * sr)) / sr
    f0 = 120 * (1 + 0.1 * np.sin(2 * np.pi * 0.7 * t))
    phase = 2 * np.pi * np.cumsum(f0) / sr
    x = sum(np.sin(k * phase) / k for k in range(1, 12)) * 0.2
    x[(t % pause_every) > pause_every - 0.3] = 0
    return (x + 0.001 * np.random.default_rng(0).standard_normal(len(t))).astype(np.float32)


def longest_zero_run(y: np.ndarray) -> int:
    best = run = 0
    for z in (y == 0):
        run = run + 1 if z else 0
        best = max(best, run)
    return best


def test_chunk_plan_and_cuts_in_pauses():
    rate = SR / 512
    assert plan_chunks(int(3 * rate), rate, 10) == 1
    assert plan_chunks(int(5 * rate), rate, 10) == 2  # two cores share anything over 4 s
    assert plan_chunks(int(25 * rate), rate, 10) == 4  # ceil(2.5) = 3, made even
    assert plan_chunks(int(25 * rate), rate, 10, for_cores=False) == 3
    x = speech_like(10.0)
    chunks = split_chunks(x, 512, 4)
    assert len(chunks) == 4 and chunks[0][0] == 0 and chunks[-1][1] == len(x) // 512
    assert all(b == a2 for (_, b), (a2, _) in zip(chunks, chunks[1:]))
    assert all(abs((b - a) - len(x) / 512 / 4) <= 0.5 * len(x) / 512 / 4 for a, b in chunks)
    for _, b in chunks[:-1]:  # each cut lands in a pause
        assert np.abs(x[b * 512 - 256:b * 512 + 256]).max() < 0.01
    # ... the pause nearest the ideal cut, not merely the quietest frame: the cores finish together
    assert all(abs((b - a) * 512 / SR - 10.0 / 4) < 1.5 for a, b in chunks)


def test_f0_in_chunks_matches_the_whole_input(model_dir: Path):
    voice = SovitsVoice.load(model_dir, device="cpu")
    x = speech_like(9.0)
    whole = C.compute_f0(x, SR, 512, "dio")
    chunks = split_chunks(x, 512, 4)
    pieces = voice._f0(x, chunks, int(0.5 * SR / 512), "dio", None)
    assert pieces.shape == whole.shape
    assert np.mean(np.abs(pieces - whole) < 1.0) > 0.98
    np.testing.assert_array_equal(voice._f0(x, [(0, len(x) // 512)], 43, "dio", None), whole)  # one chunk: exact


def test_chunked_conversion_keeps_length_and_pauses_and_is_deterministic(model_dir: Path):
    voice = SovitsVoice.load(model_dir, device="cpu")
    x = speech_like(7.3)
    cfg = ConvertConfig(chunk_seconds=2.5, context_seconds=0.3)
    y = voice.convert(x, cfg)
    assert y.shape == x.shape and np.isfinite(y).all()
    assert longest_zero_run(y) < 64  # pauses are converted, not zeroed
    np.testing.assert_array_equal(y, voice.convert(x, cfg))  # same seed, same output
    torch.set_num_threads(2)  # chunks now converted two at a time in threads: still the same output
    np.testing.assert_array_equal(y, voice.convert(x, ConvertConfig(chunk_seconds=2.5, context_seconds=0.3, workers=2)))
    torch.set_num_threads(1)
    assert not np.array_equal(y, voice.convert(x, ConvertConfig(chunk_seconds=2.5, context_seconds=0.3, seed=1)))
    # chunks batched (as on a GPU): padded rows are masked in the encoders; nearly the same audio
    batched = voice.convert(x, ConvertConfig(chunk_seconds=2.5, context_seconds=0.3, batch_size=4, workers=1))
    assert batched.shape == y.shape and np.corrcoef(batched, y)[0, 1] > 0.5
    # a single chunk gives nearly the same audio away from the joins (this tiny model has little context)
    whole = voice.convert(x, ConvertConfig(chunk_seconds=100, split_for_cores=False))
    assert np.corrcoef(whole, y)[0, 1] > 0.5


def test_transpose_auto_uses_the_subjects_f0(model_dir: Path):
    voice = SovitsVoice.load(model_dir, device="cpu")
    f0, uv = np.full(50, 100.0), np.ones(50)
    assert voice.shift(f0, uv, ConvertConfig()) == (pytest.approx(12.0), False)  # 100 Hz -> 200 Hz
    assert voice.shift(f0, uv, ConvertConfig(transpose=-3)) == (-3.0, False)
    voice.stats = {}  # a community model without statistics: the F0 decoder predicts
    assert voice.shift(f0, uv, ConvertConfig()) == (0.0, True)


def test_speakers_and_bad_models(model_dir: Path, tmp_path: Path):
    voice = SovitsVoice.load(model_dir, device="cpu")
    assert voice.speaker_id(None) == 0 and voice.speaker_id("speaker1") == 1 and voice.speaker_id("1") == 1
    with pytest.raises(ReenactError, match="not in the model"):
        voice.speaker_id("nobody")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ReenactError, match="no G_"):
        SovitsVoice.load(tmp_path / "empty")
    shutil.copy(model_dir / "G_1.pth", tmp_path / "empty" / "G_1.pth")
    with pytest.raises(ReenactError, match="config.json"):
        SovitsVoice.load(tmp_path / "empty")
    with pytest.raises(ReenactError, match="needs 16"):  # wrong content encoder for the model
        SovitsVoice.load(model_dir, content=C.ContentEncoder.random(hidden=32, proj=8))
    assert detect_backend(model_dir) == "sovits" and detect_backend(model_dir / "G_1.pth") == "sovits"
    assert detect_backend(Path("x.safetensors")) == "world"


@pytest.mark.parametrize("kind", ["8k_stereo_24bit", "short", "silent"])
def test_odd_inputs_convert(model_dir: Path, tmp_path: Path, kind: str):
    path = tmp_path / f"{kind}.wav"
    if kind == "8k_stereo_24bit":
        x = speech_like(2.0, 8000)
        sf.write(path, np.stack([x, 0.5 * x], axis=1), 8000, subtype="PCM_24")
        seconds = 2.0
    elif kind == "short":
        sf.write(path, speech_like(0.3, 16000), 16000)
        seconds = 0.3
    else:
        sf.write(path, np.zeros(SR), SR)
        seconds = 1.0
    out = convert_voice(path, model_dir, tmp_path / "out.wav", options={"device": "cpu"})
    y, sr = sf.read(out)
    assert sr == SR and abs(len(y) - seconds * SR) <= 1 and np.isfinite(y).all()


def test_cli_convert_and_errors(model_dir: Path, tmp_path: Path):
    src = tmp_path / "in.flac"
    sf.write(src, speech_like(1.5, 22050), 22050)
    out = tmp_path / "out.wav"
    result = runner.invoke(app, ["voice", "convert", str(src), "-m", str(model_dir), "-o", str(out),
                                 "--speaker", "speaker1", "--transpose", "3", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert sf.info(out).samplerate == SR
    bad = tmp_path / "notes.txt"
    bad.write_text("not audio")
    result = runner.invoke(app, ["voice", "convert", str(bad), "-m", str(model_dir), "-o", str(tmp_path / "b.wav")])
    assert result.exit_code == 2 and "notes.txt" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "b.wav").exists()
    result = runner.invoke(app, ["voice", "convert", str(src), "-m", str(model_dir), "-o", str(tmp_path / "c.wav"),
                                 "--speaker", "nobody"])
    assert result.exit_code == 2 and "nobody" in result.output


@needs_crepe
def test_crepe_f0_converts_deterministically(model_dir: Path):
    voice = SovitsVoice.load(model_dir, device="cpu")
    x = speech_like(5.0)
    cfg = ConvertConfig(f0_method="crepe-tiny", chunk_seconds=2.5, workers=2)
    y = voice.convert(x, cfg)
    assert y.shape == x.shape and np.isfinite(y).all()
    np.testing.assert_array_equal(y, voice.convert(x, cfg))  # torchcrepe's dither is seeded here


@pytest.mark.slow
def test_make_with_a_sovits_subject(model_dir: Path, tmp_path: Path, example_portrait: Path, example_driver: Path):
    from reenact.subject import create_subject, load_subject

    consent = tmp_path / "consent.txt"
    consent.write_text("I consent to synthetic videos of me for research, disclosed as AI-generated.\n")
    root = tmp_path / "subjects"
    create_subject("dora", example_portrait, consent, root=root, voice_model=model_dir)
    assert load_subject("dora", root).voice_model == "voice/sovits"
    out = tmp_path / "out.mp4"
    result = runner.invoke(app, ["make", "--subject", "dora", "--driver", str(example_driver), "-o", str(out),
                                 "--subjects-dir", str(root), "--no-measure", "--voice-dtype", "bfloat16",
                                 "--seed", "3"])
    assert result.exit_code == 0, result.output
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["backends"]["voice"] == "sovits"
    assert report["settings"]["voice_options"] == {"dtype": "bfloat16", "seed": 3}
    assert "+" in report["inputs"]["voice_model_sha256"]


def test_bfloat16_decoder_stays_close_to_float32(model_dir: Path):
    x = speech_like(2.0)
    ref = SovitsVoice.load(model_dir, device="cpu").convert(x)
    fast = SovitsVoice.load(model_dir, device="cpu", dtype="bfloat16")
    assert fast.net_g.dec.conv_post.weight.dtype == torch.bfloat16
    y = fast.convert(x)
    assert y.dtype == np.float32 and y.shape == ref.shape
    assert np.sqrt(np.mean((y - ref) ** 2) / np.mean(ref ** 2)) < 0.03
    with pytest.raises(ReenactError, match="dtype"):
        SovitsVoice.load(model_dir, device="cpu", dtype="float16")
