"""`reenact study`: plan checks, orders, gallery flags; end to end (slow): marks, resume after SIGKILL, Ray."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import EXAMPLES, REPO
from reenact.cli import app
from reenact.study import PlanError, check_plan, run_study, study_status
from reenact.study.orders import Item, make_orders

runner = CliRunner()
SECRET = bytes(range(16))
CONSENT = "I agree to synthetic videos of me for perception studies and detector training, disclosed as AI-generated.\n"


def silent_copy(src: Path, dst: Path, frames: int = 30) -> Path:
    """The first frames of a video, without its sound (a driver with a face and no speech)."""
    from reenact.media.video import VideoWriter, iter_frames

    with VideoWriter(dst, 25) as writer:
        for frame in itertools.islice(iter_frames(src), frames):
            writer.write(frame)
    return dst


def write_plan(folder: Path, body: str) -> Path:
    (folder / "consent.txt").write_text(CONSENT)
    path = folder / "plan.toml"
    path.write_text(body.format(portrait=EXAMPLES / "portrait.png", driver=EXAMPLES / "driver.mp4"))
    return path


TINY = """
[study]
name = "tiny"
seed = 5
participants = 3

[output]
fps = 20
width = 192
height = 192
duration = 1.0
crf = 23

[[subjects]]
name = "ada"
portrait = "{portrait}"
consent = "consent.txt"

[[subjects]]
name = "bob"
portrait = "{portrait}"
consent = "consent.txt"

[[drivers]]
name = "talk"
path = "{driver}"

[[real]]
name = "control"
path = "{driver}"

[conditions]
face = "all"
"""


# ---------------------------------------------------------------- plan checks

def test_five_mistakes_are_named_at_once_and_nothing_is_written(tmp_path: Path) -> None:
    silent = silent_copy(EXAMPLES / "driver.mp4", tmp_path / "silent.mp4")
    plan = write_plan(tmp_path, f"""
[study]
participants = 2
clips_per_participant = 40            # mistake 5: more than the plan makes

[output]
duration = 1.0

[[subjects]]
name = "ada"
portrait = "{{portrait}}"
consent = "consent.txt"
scope = "advertising"                 # mistake 3: consent does not cover perception studies
speech = ["{tmp_path}"]

[[subjects]]
name = "bob"
portrait = "missing.png"              # mistake 1: missing file
consent = "consent.txt"

[[drivers]]
name = "mute"
path = "{silent}"                     # mistake 4: fake needs speech

[conditions]
fake = [["ada", "mute"], ["zed", "mute"]]   # mistake 2: unknown subject
""")
    with pytest.raises(PlanError) as info:
        check_plan(plan)
    text = "\n".join(info.value.problems)
    assert "missing.png" in text and "portrait not found" in text
    assert "unknown subject 'zed'" in text
    assert "does not cover this study" in text and "advertising" in text
    assert "driver mute: has no speech" in text
    assert "clips_per_participant is 40" in text

    out = tmp_path / "study"
    for args in (["study", "check", str(plan)], ["study", "run", str(plan), "-o", str(out)]):
        result = runner.invoke(app, args)
        assert result.exit_code == 2, result.output
        for needle in ("missing.png", "'zed'", "advertising", "has no speech", "clips_per_participant"):
            assert needle in result.output
    assert not out.exists()


def test_unknown_settings_and_bad_values_are_listed(tmp_path: Path) -> None:
    plan = write_plan(tmp_path, TINY.replace("crf = 23", "crf = 80\nsise = 3").replace("fps = 20", "fps = -1")
                      + "\n[extra]\nx = 1\n")
    with pytest.raises(PlanError) as info:
        check_plan(plan)
    text = "\n".join(info.value.problems)
    assert "unknown setting 'sise'" in text and "[extra]: unknown section" in text
    assert "crf must be 0 to 51" in text and "fps must be between" in text


def test_valid_plan_lists_its_clips(tmp_path: Path) -> None:
    plan = check_plan(write_plan(tmp_path, TINY))
    assert sorted(c.key for c in plan.clips) == ["face/ada/talk", "face/bob/talk", "real/-/control"]
    assert plan.per_participant == 3


# ---------------------------------------------------------------- orders

def test_orders_are_balanced_seeded_and_never_repeat_a_person() -> None:
    items = ([Item(f"f{s}{d}", "fake", s) for s in "abc" for d in "123"]
             + [Item(f"r{d}", "real", f"real:{d}") for d in "123"])
    orders = make_orders(items, participants=12, per_participant=8, seed=1)
    assert orders == make_orders(items, participants=12, per_participant=8, seed=1)
    assert orders != make_orders(items, participants=12, per_participant=8, seed=2)
    for order in orders:
        assert len(order) == 8 and len({x.id for x in order}) == 8
        assert all(a.person != b.person for a, b in zip(order, order[1:]))
        assert Counter(x.condition for x in order) == {"fake": 6, "real": 2}
    shown = Counter(x.id for order in orders for x in order)
    assert set(shown) == {x.id for x in items}
    fakes = [n for k, n in shown.items() if k.startswith("f")]
    assert max(fakes) - min(fakes) <= 1  # every clip shown about equally often
    first = Counter(order[0].condition for order in orders)  # positions are counterbalanced
    assert first["real"] >= 2


def test_orders_refuse_when_one_person_dominates() -> None:
    items = [Item(f"a{i}", "fake", "a") for i in range(3)] + [Item("b", "real", "b")]
    with pytest.raises(ValueError, match="in a row"):
        make_orders(items, 1, 4, seed=0)


# ---------------------------------------------------------------- gallery

def test_gallery_flags_and_plots(tmp_path: Path) -> None:
    from reenact.study.gallery import flags, plot

    plan = check_plan(write_plan(tmp_path, TINY))
    base = {"condition": "face", "video": {"loudness": -23.2}, "verify": {"marked": True},
            "measures": {"face": {"identity_median": 0.3, "mouth_corr": 0.9}}}
    assert flags(base, plan) == []
    bad = {**base, "verify": {"marked": False}, "measures": {"face": {"identity_median": 0.7, "mouth_corr": 0.1}}}
    assert len(flags(bad, plan)) == 3
    real = {**base, "condition": "real", "measures": {}, "video": {"loudness": -30.0}}
    assert flags(real, plan) == ["real control verifies as marked", "loudness -30.0 LUFS, study -23"]
    svg = plot({"output": [0.0, 110.0, 120.0, 0.0, 130.0, 135.0], "original": [100.0, 105.0, 0.0, 125.0]}, "F0",
               skip_zero=True)  # unvoiced frames (0) split the lines; a lone voiced frame draws nothing
    assert svg.count("<polyline") == 3 and "<svg" in svg


# ---------------------------------------------------------------- end to end (slow)

def signature(study: Path) -> dict:
    """What must be equal between two runs of one plan: the records (ids, hashes, settings, marks, measures,
    verify result, size, loudness), less timings and the file's sha256 (the signed manifest holds a time)."""
    out = {}
    for path in sorted((study / "work" / "records").glob("*.json")):
        record = json.loads(path.read_text())
        for k in ("timings", "worker", "output_sha256"):
            record.pop(k)
        out[record["key"]] = record
    return out


def assert_same_clips(a: Path, b: Path) -> None:
    """Same records; the measures equal up to the encoder's noise (see assert_same_pictures); same pictures."""
    x, y = signature(a), signature(b)
    mx, my = ({k: _flat(r.pop("measures")) for k, r in s.items()} for s in (x, y))
    assert x == y
    assert mx.keys() == my.keys()
    for key in mx:
        assert mx[key].keys() == my[key].keys(), key
        for name, value in mx[key].items():
            other = my[key][name]
            if isinstance(value, float) and isinstance(other, float):
                assert abs(value - other) < 0.02, (key, name, value, other)
            else:
                assert value == other, (key, name)
    assert_same_pictures(a, b)


def _flat(d: dict | None, prefix: str = "") -> dict:
    out = {}
    for k, v in (d or {}).items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def assert_same_pictures(a: Path, b: Path) -> None:
    """The clips of two study folders show the same pictures. x264 (through PyAV) was seen to give other bits
    from identical input planes run to run in one process, even on one thread, so this allows its noise."""
    from reenact.media.video import iter_frames

    for record in signature(a).values():
        x = np.stack(list(iter_frames(a / "stimuli" / f"{record['id']}.mp4"))).astype(np.float64)
        y = np.stack(list(iter_frames(b / "stimuli" / f"{record['id']}.mp4"))).astype(np.float64)
        assert x.shape == y.shape
        mse = np.mean((x - y) ** 2)
        assert mse == 0 or 10 * np.log10(255**2 / mse) > 38, record["key"]


def key_rows(study: Path) -> list[str]:
    return sorted((study / "key.csv").read_text().splitlines())


@pytest.mark.slow
def test_study_run_marks_fakes_not_real_controls(tmp_path: Path) -> None:
    from reenact.media.audio import integrated_loudness, read_audio
    from reenact.media.video import probe
    from reenact.provenance.verify import verify

    plan = write_plan(tmp_path, TINY)
    out = tmp_path / "study"
    events = []
    result = run_study(plan, out, workers=1, progress=events.append)
    assert result.ok and len(result.made) == 3
    assert [e.state for e in events if e.state == "done"] == ["done"] * 3
    key = {row["key"]: row for row in _csv(out / "key.csv")}
    stimuli = _csv(out / "stimuli.csv")
    assert len(stimuli) == 3 and {r["id"] for r in stimuli} == {r["id"] for r in key.values()}
    for row in key.values():
        video = out / "stimuli" / f"{row['id']}.mp4"
        info = probe(video)
        assert (info.width, info.height, float(info.fps)) == (192, 192, 20.0)
        assert abs(integrated_loudness(read_audio(video)) + 23.0) < 1.0
        assert verify(video)["marked"] == (row["condition"] != "real"), row["key"]
        assert len(row["id"]) == 12 and int(row["id"], 16) >= 0  # random hex: names nothing
    orders = sorted((out / "orders").glob("participant_*.csv"))
    assert len(orders) == 3
    page = (out / "index.html").read_text()
    assert page.count('<section class="clip') == 3 and "<svg" in page and "http" not in page
    assert "real control verifies" not in page and "fake does not verify" not in page
    status = study_status(out)
    assert len(status["done"]) == 3 and not status["pending"] and not status["failed"]
    again = run_study(plan, out, workers=1)
    assert again.made == [] and len(again.skipped) == 3


def _csv(path: Path) -> list[dict]:
    import csv

    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_resume_after_sigkill_equals_uninterrupted_run(tmp_path: Path) -> None:
    plan = write_plan(tmp_path, TINY)
    whole = tmp_path / "whole"
    run_study(plan, whole, workers=1, secret=SECRET)

    killed = tmp_path / "killed"
    shutil.copytree(whole / "work" / "subjects", killed / "work" / "subjects")  # the same subjects
    code = (f"from reenact.study import run_study; run_study({str(plan)!r}, {str(killed)!r}, workers=1, "
            f"secret=bytes.fromhex({SECRET.hex()!r}))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    records = killed / "work" / "records"
    deadline = time.time() + 300
    while time.time() < deadline and not (records.exists() and any(records.glob("*.json"))):
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the runner and its worker processes, mid-run
    proc.wait()
    done_before = len(list(records.glob("*.json")))
    assert 1 <= done_before < 3
    assert len(study_status(killed)["pending"]) == 3 - done_before

    resumed = run_study(plan, killed, workers=1)
    assert len(resumed.skipped) == done_before and len(resumed.made) == 3 - done_before
    assert_same_clips(killed, whole)
    assert key_rows(killed) == key_rows(whole)
    assert sorted(p.read_text() for p in (killed / "orders").iterdir()) == \
        sorted(p.read_text() for p in (whole / "orders").iterdir())
    assert not list(killed.rglob(".*.partial*"))


@pytest.fixture
def local_ray():
    """A Ray cluster of this machine on 127.0.0.1, started here and shut down after the test."""
    ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'reenact[ray]')")
    ray.init(_node_ip_address="127.0.0.1", num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}})
    yield ray
    ray.shutdown()


@pytest.mark.slow
def test_ray_gives_the_same_clips_as_local_workers(tmp_path: Path, local_ray) -> None:
    plan = write_plan(tmp_path, TINY)
    on_ray = run_study(plan, tmp_path / "ray", ray="auto", secret=SECRET)
    assert on_ray.ok and len(on_ray.made) == 3
    shutil.copytree(tmp_path / "ray" / "work" / "subjects", tmp_path / "local" / "work" / "subjects")
    run_study(plan, tmp_path / "local", workers=2, secret=SECRET)
    assert_same_clips(tmp_path / "ray", tmp_path / "local")
    assert key_rows(tmp_path / "ray") == key_rows(tmp_path / "local")
    assert json.loads((tmp_path / "ray" / "study.json").read_text())["runs"][-1]["engine"] == "ray"


def test_status_of_a_folder_that_is_not_a_study(tmp_path: Path) -> None:
    result = runner.invoke(app, ["study", "status", str(tmp_path)])
    assert result.exit_code == 2 and "not a study folder" in result.output


def flaky_task(task):
    """A stand-in clip task (run in worker processes): "bad" always fails, "once" fails on its first try."""
    marker = Path(task.path)
    if task.key == "bad" or (task.key == "once" and not marker.exists()):
        marker.touch()
        raise RuntimeError(f"{task.key} broke")
    return {"key": task.key}


def test_failed_clips_are_retried_then_listed(tmp_path: Path) -> None:
    from reenact.study.run import _run_local
    from reenact.study.tasks import ClipTask

    jobs = [(ClipTask(key=k, id=k, condition="real", subject=None, driver=k, path=str(tmp_path / k),
                      subjects_dir=None, settings={}, output_id=""), {"key": k}) for k in ("good", "once", "bad")]
    results, errors = [], []
    _run_local(jobs, 2, 1, lambda ident, out, wall: results.append(out["key"]),
               lambda ident, message, final: errors.append((ident["key"], message, final)), fn=flaky_task)
    assert sorted(results) == ["good", "once"]
    assert sorted(errors) == [("bad", "RuntimeError: bad broke", False), ("bad", "RuntimeError: bad broke", True),
                              ("once", "RuntimeError: once broke", False)]
