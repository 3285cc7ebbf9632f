"""Face measures: normalisation and correlation helpers on synthetic landmarks, and one real driver."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from reenact.evaluate.face import (format_face_report, identity_stats, jitter, landmark_error, motion_measures,
                                   pearson, relative_motion, sample_indices)
from reenact.face import pose

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def face(mouth: float = 0.0, eyes: float = 0.06, turn: float = 0.0, nod: float = 0.0) -> np.ndarray:
    """A schematic 68-point face about 2 units wide: mouth gap, eye half-height, nose shifts (yaw, pitch)."""
    lm = np.zeros((68, 2))
    k = np.arange(17)
    lm[0:17] = np.stack([-np.cos(np.pi * k / 16), -0.2 + 1.3 * np.sin(np.pi * k / 16)], 1)
    lm[17:27] = np.stack([np.linspace(-0.8, 0.8, 10), np.full(10, -0.55)], 1)
    lm[27:36] = np.stack([np.full(9, turn), np.linspace(-0.3, 0.2, 9) + nod], 1)
    for i0, cx in ((36, -0.4), (42, 0.4)):
        lm[i0:i0 + 6] = np.array([[-0.16, 0], [-0.06, -eyes], [0.06, -eyes], [0.16, 0], [0.06, eyes],
                                  [-0.06, eyes]]) + [cx, -0.3]
    lm[48:60] = np.stack([0.35 * np.cos(np.linspace(0, 2 * np.pi, 12, endpoint=False)),
                          0.55 + 0.12 * np.sin(np.linspace(0, 2 * np.pi, 12, endpoint=False))], 1)
    x = np.array([-0.3, -0.1, 0, 0.1, 0.3, 0.1, 0, -0.1])
    lm[60:68] = np.stack([x, 0.55 + np.array([0, -1, -1, -1, 0, 1, 1, 1]) * mouth / 2], 1)
    return lm.astype(np.float32)


def talking(n: int = 60, seed: int = 0) -> np.ndarray:
    """A sequence (n, 68, 2): mouth, blinks and head turn varying independently."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    mouth = 0.1 + 0.1 * np.sin(t / 3.0) + 0.02 * rng.random(n)
    eyes = np.where(t % 20 < 2, 0.01, 0.06)
    turn = 0.1 * np.sin(t / 11.0)
    nod = 0.05 * np.cos(t / 7.0)
    return np.stack([face(m, e, y, p) for m, e, y, p in zip(mouth, eyes, turn, nod)])


def test_pearson():
    a = np.arange(10.0)
    assert pearson(a, 2 * a + 1) == pytest.approx(1.0)
    assert pearson(a, -a) == pytest.approx(-1.0)
    assert pearson(a, np.ones(10)) is None  # constant: undefined
    assert pearson(a[:2], a[:2]) is None
    b = np.random.default_rng(1).normal(size=200)
    assert abs(pearson(a.repeat(20), b)) < 0.2


def test_relative_motion_ignores_face_size_and_position():
    drv = talking()
    out = 3.5 * drv + np.array([400.0, 250.0], np.float32)  # same motion, bigger face elsewhere in the frame
    assert np.allclose(relative_motion(drv), relative_motion(out), atol=1e-5)
    m = motion_measures(out, drv)
    assert m["landmark_error"] == pytest.approx(0.0, abs=1e-5)
    assert all(m[f"{k}_corr"] == pytest.approx(1.0) for k in ("mouth", "eyes", "yaw", "pitch"))
    assert all(m[f"{k}_gain"] == pytest.approx(1.0, rel=1e-4) for k in ("mouth", "eyes", "yaw", "pitch"))
    assert m["static_error"] > 0.01
    json.dumps(m)


def test_motion_allows_for_a_leaning_portrait():
    drv = talking()
    angle = 0.4  # the portrait's head leans by 23 degrees
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]], np.float32)
    out = 2.0 * drv @ rot.T + [100.0, 40.0]
    assert np.allclose(pose.roll(out) - pose.roll(drv), angle, atol=1e-4)
    m = motion_measures(out, drv)
    assert m["landmark_error"] == pytest.approx(0.0, abs=1e-4)
    assert m["expression_error"] == pytest.approx(0.0, abs=1e-4)
    assert m["mouth_corr"] == pytest.approx(1.0) and m["eyes_corr"] == pytest.approx(1.0)


def test_expression_motion_ignores_head_motion():
    drv = talking()
    t = np.arange(len(drv))[:, None, None]
    angle = 0.1 * np.sin(t / 5.0)  # the head sways, scales and moves, the face deforms as before
    c, s = np.cos(angle), np.sin(angle)
    x, y = drv[..., :1], drv[..., 1:]
    moving = (1 + 0.05 * np.sin(t / 4.0)) * np.concatenate([c * x - s * y, s * x + c * y], -1) + 0.3 * t
    m = motion_measures(moving.astype(np.float32), drv)
    assert m["landmark_error"] > 0.1
    assert m["expression_error"] < 0.01 * m["landmark_error"]
    assert m["expression_static_error"] > 0.01
    m = motion_measures(np.repeat(drv[:1], len(drv), axis=0), drv)
    assert m["expression_error"] == pytest.approx(m["expression_static_error"])


def test_relative_motion_is_in_face_sizes():
    base = face()
    seq = np.stack([base, base + [0.5 * pose.face_scale(base), 0]])  # a shift of half a face size
    rel = relative_motion(seq)
    assert np.allclose(rel[0], 0)
    assert np.allclose(rel[1], [0.5, 0], atol=1e-5)


def test_still_output_scores_static_error():
    drv = talking()
    out = np.repeat(drv[:1], len(drv), axis=0)
    m = motion_measures(out, drv)
    assert m["landmark_error"] == pytest.approx(m["static_error"])
    assert all(m[f"{k}_corr"] is None for k in ("mouth", "eyes", "yaw", "pitch"))  # a still output has no correlation
    assert all(m[f"{k}_gain"] == pytest.approx(0.0, abs=1e-5) for k in ("mouth", "eyes", "yaw", "pitch"))


def test_motion_detects_unrelated_mouth():
    drv, out = talking(seed=0), talking(seed=0).copy()
    rng = np.random.default_rng(5)
    for i in range(len(out)):  # same head and eyes, random mouth
        out[i, 60:68] = face(mouth=0.2 * rng.random())[60:68]
    m = motion_measures(out, drv)
    assert abs(m["mouth_corr"]) < 0.5
    assert m["eyes_corr"] == pytest.approx(1.0)
    assert m["yaw_corr"] == pytest.approx(1.0)
    assert m["landmark_error"] > 0


def test_landmark_error():
    a = np.zeros((2, 68, 2))
    b = a.copy()
    b[..., 0] = 3.0
    b[..., 1] = 4.0
    assert landmark_error(a, b) == pytest.approx(5.0)


def test_jitter():
    base = face()
    steady = np.stack([base + [0.01 * t, 0] for t in range(20)])  # constant velocity: no acceleration
    assert jitter(steady) == pytest.approx(0.0, abs=1e-6)
    shaky = steady.copy()
    shaky[1::2] += [0.1 * pose.face_scale(base), 0]  # every other frame off by 0.1 face sizes
    assert jitter(shaky) == pytest.approx(0.2, rel=1e-3)  # |+0.1 - 2*0 + 0.1| or |0 - 0.2 + 0|
    found = np.ones(20, bool)
    found[1::2] = False  # every triple touches a lost frame
    assert jitter(shaky, found) is None
    assert jitter(steady[:2]) is None
    # scale-free: the same shake on a face three times larger
    assert jitter(3 * shaky) == pytest.approx(jitter(shaky), rel=1e-4)


def test_identity_stats_and_sampling():
    s = identity_stats(np.array([0.1, 0.2, 0.3, 0.7]))
    assert s["median"] == pytest.approx(0.25)
    assert s["under_threshold"] == pytest.approx(0.75)
    assert s["samples"] == 4
    assert 0.3 < s["p90"] < 0.7
    assert identity_stats(np.empty(0))["median"] is None
    idx = sample_indices(np.arange(100), 5)
    assert idx.tolist() == [0, 25, 50, 74, 99]
    assert sample_indices(np.arange(3), 5).tolist() == [0, 1, 2]


def test_format_report_with_missing_values():
    report = {"frames": 10, "frames_output": 10, "frames_driver": 11, "no_face_frames": 2,
              "driver_no_face_frames": 0, "identity": identity_stats(np.array([0.2, 0.3])),
              "motion": motion_measures(talking(10), talking(10)),
              "jitter": {"output": 0.01, "driver": None, "ratio": None}}
    text = format_face_report(report)
    assert "identity median" in text and "mouth corr" in text and "n/a" in text
    json.dumps(report)


@pytest.mark.slow
def test_driver_against_itself(tmp_path):
    """A real driver (3 s of the bundled example) against itself, and against a copy scaled and moved."""
    drv_path = EXAMPLES / "driver.mp4"
    if not drv_path.exists():
        pytest.skip(f"needs the bundled example driver ({drv_path} is missing)")
    import cv2

    from reenact.evaluate.face import evaluate_face
    from reenact.media.video import VideoWriter, iter_frames

    clip, moved, still = tmp_path / "clip.mp4", tmp_path / "moved.mp4", tmp_path / "frame0.png"
    with VideoWriter(clip, 25, crf=12) as a, VideoWriter(moved, 25, crf=12) as b:
        for i, frame in zip(range(75), iter_frames(drv_path)):
            a.write(frame)
            canvas = np.full((480, 560, 3), 90, np.uint8)  # the face 0.75x, off-centre in a bigger frame
            canvas[100:409, 200:508] = cv2.resize(frame, (308, 309), interpolation=cv2.INTER_AREA)
            b.write(canvas)
            if i == 0:
                cv2.imwrite(str(still), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))

    r = evaluate_face(clip, still, clip, identity_samples=6)
    json.dumps(r)
    assert r["frames"] == 75 and r["no_face_frames"] == 0
    assert r["motion"]["landmark_error"] == pytest.approx(0.0, abs=1e-6)
    assert all(r["motion"][f"{k}_corr"] == pytest.approx(1.0) for k in ("mouth", "eyes", "yaw", "pitch"))
    assert r["identity"]["median"] < 0.45 and r["identity"]["samples"] == 6  # same person, other poses
    assert r["jitter"]["ratio"] == pytest.approx(1.0)

    r = evaluate_face(moved, still, clip, identity_samples=4)
    assert r["frames"] == 75 and r["no_face_frames"] <= 3  # HOG may miss a turned face in the copy
    assert r["motion"]["landmark_error"] < 0.25 * r["motion"]["static_error"]
    assert r["motion"]["mouth_corr"] > 0.8
    assert r["motion"]["yaw_corr"] > 0.8
    assert r["identity"]["median"] < 0.45


def test_output_without_any_face(tmp_path):
    """An output with no face at all is measured (every frame counted as lost), not an error."""
    from conftest import write_video

    from reenact.evaluate.face import evaluate_face

    drv_path, source = EXAMPLES / "driver.mp4", EXAMPLES / "portrait.png"
    if not drv_path.exists():
        pytest.skip(f"needs the bundled example driver ({drv_path} is missing)")
    blank = write_video(tmp_path / "blank.mp4", n=12, width=96, height=96)
    r = evaluate_face(blank, source, drv_path, identity_samples=4)
    json.dumps(r)
    assert r["no_face_frames"] == 12 and r["identity"]["median"] is None and r["motion"]["mouth_corr"] is None
    assert "n/a" in format_face_report(r)


def test_plot_series_draws_output_against_driver(tmp_path):
    pytest.importorskip("matplotlib")
    from reenact.evaluate.face import plot_series, proxy_series

    driver = talking(60) * 50 + 100
    output = talking(60, seed=1) * 60 + 80
    found = np.ones(60, bool)
    found[10:13] = False
    report = {"video": "out.mp4", "driver": "drv.mp4", "motion": motion_measures(output, driver),
              "proxies": proxy_series(output, driver, found, found, 25.0)}
    assert len(report["proxies"]["mouth"]["output"]) == 60
    path = tmp_path / "plot.png"
    plot_series(report, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
    assert [p.name for p in tmp_path.iterdir()] == ["plot.png"]  # no partial file left


def test_blinks_counted_and_shown():
    from reenact.evaluate.face import blinks, blinks_shown

    eyes = np.full(60, 0.3)
    eyes[10:13] = 0.15  # 3 frames: too short to count
    eyes[30:36] = 0.15  # a 6-frame blink
    eyes[50:55] = 0.16
    assert blinks(eyes) == [(30, 36), (50, 55)]
    out = np.full(60, 0.4)
    out[31:35] = 0.2  # the output shuts its eyes for the first one only
    assert blinks_shown(out, eyes) == (2, 1)
    report = motion_measures(talking(60), talking(60))
    assert report["blinks_driver"] == report["blinks_shown"]
