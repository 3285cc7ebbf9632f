"""Provenance core: payload code, watermark embedding/reading in memory, label, C2PA signing, verify."""

from __future__ import annotations

import stat
from pathlib import Path

import numpy as np
import pytest

from conftest import EXAMPLES, write_video
from reenact.media.audio import Audio, read_audio
from reenact.media.video import iter_frames
from reenact.provenance import audio_mark, video_mark
from reenact.provenance.label import draw_label
from reenact.provenance.manifest import Claims, credentials, read_manifest, read_metadata, sign_mp4
from reenact.provenance.payload import N_CODED, TOOL_ID, Payload, decode, encode
from reenact.provenance.verify import format_verify_report, verify


@pytest.fixture(autouse=True)
def config_home(tmp_path_factory, monkeypatch) -> Path:
    """Signing credentials go to a temporary config dir, never the user's."""
    home = tmp_path_factory.getbasetemp() / "config"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home))
    for name in ("REENACT_C2PA_DIR", "REENACT_C2PA_CERT", "REENACT_C2PA_KEY"):
        monkeypatch.delenv(name, raising=False)
    return home


def test_payload_round_trip_and_code() -> None:
    p = Payload.new("12345678-1234-4234-9234-123456789abc")
    assert p.tool == TOOL_ID and p.output_id == 0x123456781234 and p.ours
    assert Payload.from_hex(p.hex()) == p and Payload.from_bits(p.bits()) == p
    coded = encode(p)
    assert coded.shape == (N_CODED,)
    rng = np.random.default_rng(0)
    noisy = (2.0 * coded - 1.0) + rng.normal(0, 0.8, N_CODED)
    noisy[rng.choice(N_CODED, 15, replace=False)] *= -1  # some soft bits flipped outright
    decoded, agreement = decode(noisy)
    assert decoded == p and agreement > 0.5


def test_random_soft_values_do_not_decode_to_our_tool() -> None:
    rng = np.random.default_rng(1)
    results = [decode(rng.normal(0, 1, N_CODED)) for _ in range(100)]
    assert all(not (p.ours and a >= video_mark.AGREEMENT_MIN) for p, a in results)
    assert max(a for _, a in results) < 0.8


def _frames(n: int = 12) -> list[np.ndarray]:
    return [f for _, f in zip(range(n), iter_frames(EXAMPLES / "driver.mp4"))]


def test_video_mark_is_invisible_and_read_back_in_memory() -> None:
    frames = _frames()
    payload = Payload.new()
    marker = video_mark.VideoMarker(payload)
    marked = [marker.mark(f) for f in frames]
    assert all(m.dtype == np.uint8 and m.shape == f.shape for m, f in zip(marked, frames))
    assert min(video_mark.psnr(f, m) for f, m in zip(frames, marked)) >= 40.0
    found = video_mark.detect_frames(marked)
    assert found.found and found.payload == payload and found.crop == (0.0, 0.0, 1.0, 1.0)
    assert not video_mark.detect_frames(frames).found


def test_video_mark_survives_crop_and_scale_in_memory() -> None:
    import cv2

    frames = _frames(8)
    payload = Payload.new()
    marker = video_mark.VideoMarker(payload)
    h, w = frames[0].shape[:2]
    attacked = [cv2.resize(marker.mark(f)[h // 10:h - h // 10, w // 12:w - w // 12], None, fx=0.6, fy=0.6,
                           interpolation=cv2.INTER_AREA) for f in frames]
    found = video_mark.detect_frames(attacked)
    assert found.found and found.payload == payload
    assert abs(found.crop[2] - (1 - 2 / 12)) < 0.02 and abs(found.crop[3] - 0.8) < 0.02


def test_audio_mark_snr_and_read_back() -> None:
    audio = read_audio(EXAMPLES / "driver.mp4")
    payload = Payload.new()
    marked = audio_mark.mark_audio(audio, payload)
    assert marked.samples.shape == audio.samples.shape and marked.sample_rate == audio.sample_rate
    assert audio_mark.snr(audio, marked) >= 30.0
    assert audio_mark.detect_audio(marked) == (True, payload, pytest.approx(1.0, abs=0.05))
    unmarked = audio_mark.detect(audio)
    assert not unmarked.found and unmarked.confidence < audio_mark.AGREEMENT_MIN
    # Trimmed at an arbitrary sample: synchronisation finds the blocks again.
    cut = Audio(marked.samples[:, 12345:], marked.sample_rate)
    assert audio_mark.detect(cut).payload == payload


def test_audio_too_short_is_left_alone() -> None:
    short = Audio(np.zeros((1, 8000), np.float32), 16000)
    assert audio_mark.mark_audio(short, Payload.new()) is short
    assert not audio_mark.detect(short).found
    silence = audio_mark.detect(Audio(np.zeros((1, 16000 * 6), np.float32), 16000))
    assert not silence.found and silence.confidence < audio_mark.AGREEMENT_MIN  # the dither: no clean zero codeword


def test_label_is_drawn_in_a_corner_only() -> None:
    frame = np.full((256, 320, 3), 200, np.uint8)
    out = draw_label(frame)
    changed = np.argwhere(np.any(out != frame, axis=2))
    assert len(changed) > 200 and frame.max() == 200  # input untouched
    assert changed[:, 0].min() > 256 * 0.8 and changed[:, 1].min() > 320 * 0.5  # bottom right
    assert (out[changed[:, 0], changed[:, 1]] < 200).any() and (out == 255).any()  # dark box, white text


def _small_mp4(tmp_path: Path) -> Path:
    return write_video(tmp_path / "in.mp4", n=10, width=64, height=48, audio_seconds=0.5)


def test_sign_mp4_manifest_claims_metadata_and_credentials(tmp_path: Path, config_home: Path) -> None:
    src = _small_mp4(tmp_path)
    before = src.read_bytes()
    payload = Payload.new()
    claims = Claims(payload, output_id="out-1", consent_sha256="ab" * 32, settings={"visible_label": False})
    out = sign_mp4(src, tmp_path / "signed.mp4", claims)
    assert src.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.mp4", "signed.mp4"]
    key = config_home / "reenact" / "c2pa" / "key.pem"
    assert key.exists() and stat.S_IMODE(key.stat().st_mode) == 0o600
    m = read_manifest(out)
    assert m["state"] == "valid" and m["trusted"] and m["reenact"] and m["created"]
    assert m["digital_source_type"].endswith("/trainedAlgorithmicMedia")
    assert m["soft_binding"]["alg"] == "org.reenact.wm.v1"
    assert m["claims"]["payload"] == payload.hex() and m["claims"]["consent_sha256"] == "ab" * 32
    assert m["claims"]["settings"] == {"visible_label": False}
    assert not m["thumbnail"]
    tags = read_metadata(out)
    assert tags["synthetic"] == "true" and tags["payload"] == payload.hex() and "reenact" in tags["generator"]
    assert read_manifest(src) == {"state": "absent"}


def test_users_own_credentials_are_used(tmp_path: Path, monkeypatch) -> None:
    from reenact.provenance.manifest import make_credentials

    own = make_credentials(tmp_path / "own")
    monkeypatch.setenv("REENACT_C2PA_CERT", str(own.cert))
    monkeypatch.setenv("REENACT_C2PA_KEY", str(own.key))
    assert credentials().cert == own.cert
    out = sign_mp4(_small_mp4(tmp_path), tmp_path / "signed.mp4", Claims(Payload.new()))
    m = read_manifest(out)  # signed by a root verify does not know: valid, not trusted
    assert m["state"] == "valid" and not m["trusted"]
    assert read_manifest(out, trust=own.root)["trusted"]
    monkeypatch.delenv("REENACT_C2PA_KEY")
    from reenact.errors import ReenactError

    with pytest.raises(ReenactError):
        credentials()


def test_flipped_byte_invalidates_the_manifest(tmp_path: Path) -> None:
    out = sign_mp4(_small_mp4(tmp_path), tmp_path / "signed.mp4", Claims(Payload.new()))
    flip_media_byte(out)
    assert read_manifest(out)["state"] == "invalid"


def flip_media_byte(path: Path, at: float = 0.5) -> None:
    """Flip one byte of the file's media data (the mdat box), `at` a fraction into it."""
    data = bytearray(path.read_bytes())
    pos = data.find(b"mdat")
    assert pos > 0
    size = int.from_bytes(data[pos - 4:pos], "big")
    data[pos + 4 + int((size - 8) * at)] ^= 0xFF
    path.write_bytes(bytes(data))


def test_verify_unmarked_and_signed_only(tmp_path: Path) -> None:
    src = _small_mp4(tmp_path)
    report = verify(src)
    assert not report["marked"] and report["manifest"]["state"] == "absent"
    assert "no mark of reenact found" in format_verify_report(report)
    signed = sign_mp4(src, tmp_path / "signed.mp4", Claims(Payload.new()))
    report = verify(signed)
    assert report["marked"] and report["manifest"]["reenact"]
    assert "MARKED" in format_verify_report(report)


def test_cli_verify_exit_codes(tmp_path: Path) -> None:
    import json

    from typer.testing import CliRunner

    from reenact.cli import app

    src = _small_mp4(tmp_path)
    runner = CliRunner()
    result = runner.invoke(app, ["verify", str(src)])
    assert result.exit_code == 1 and "no mark of reenact found" in result.stdout
    signed = sign_mp4(src, tmp_path / "signed.mp4", Claims(Payload.new()))
    result = runner.invoke(app, ["verify", str(signed), "--json"])
    assert result.exit_code == 0 and json.loads(result.stdout)["manifest"]["state"] == "valid"
    result = runner.invoke(app, ["verify", str(tmp_path / "missing.mp4")])
    assert result.exit_code == 2


def test_silent_audio_is_left_unmarked_and_still_muxes(tmp_path) -> None:
    """An all-zero track (vox_driving3.mov has one) must not turn into NaN and break AAC encoding."""
    import numpy as np

    from reenact.media.audio import Audio, read_audio
    from reenact.media.video import VideoWriter
    from reenact.provenance import Payload, mark_audio

    silent = Audio(np.zeros(44100 * 3, np.float32), 44100)
    marked = mark_audio(silent, Payload.new())
    assert np.isfinite(marked.samples).all() and not marked.samples.any()
    out = tmp_path / "silent.mp4"
    writer = VideoWriter(out, 25)
    for _ in range(75):
        writer.write(np.zeros((48, 64, 3), np.uint8))
    writer.close(audio=marked)
    assert abs(read_audio(out).duration - 3.0) < 0.1
