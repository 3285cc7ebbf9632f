"""Run a study plan: subjects first, then one task per clip on local worker processes or a Ray cluster.

The study folder (docs/study.md):

    stimuli/<id>.mp4           the clips, named by random ids that reveal nothing
    stimuli.csv                id, duration, width, height, fps
    orders/participant_NNN.csv position, id
    key.csv                    id, subject, driver, condition, backend, settings, input hashes, seed (keep apart)
    study.json                 plan hash, versions, timings
    index.html                 the QC gallery (names subjects and conditions: for the experimenter)
    work/                      records per clip, gallery data, failures, inline subjects, the id secret

Resuming: a clip whose record, output file and hashes (inputs, settings) match is skipped; the record is
written last, after the clip's file, so a run killed at any point leaves either a whole clip or none. Each
failed clip is retried, then listed in `work/failed/`, and the run reports it without touching the clips that
succeeded. The runner is the only writer: tasks return their clip's bytes (through Ray's object store on a
cluster), so workers need to see the inputs, not the study folder.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import io
import json
import logging
import os
import platform
import secrets
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from reenact.errors import ReenactError
from reenact.evaluate.voice import cached_speaker_embedding, speaker_paths
from reenact.files import sha256_file, write_bytes
from reenact.pipeline import _model_sha256
from reenact.study.gallery import write_gallery
from reenact.study.orders import Item, make_orders
from reenact.study.plan import Plan, check_plan, slug
from reenact.study.tasks import ClipTask, run_clip
from reenact.subject import create_subject, load_subject
from reenact.voice.world.model import TrainConfig
from reenact.voice.world.ppgnet import NetConfig

log = logging.getLogger(__name__)

KEY_COLUMNS = ["id", "subject", "driver", "condition", "motion_backend", "voice_backend", "settings",
               "driver_sha256", "portrait_sha256", "consent_record_sha256", "voice_model_sha256",
               "inputs_sha256", "settings_sha256", "output_id", "seed", "key"]


@dataclass
class ClipEvent:
    """Progress of a run: one clip changed state."""

    key: str
    state: str  # "skipped", "done", "retry", "failed", "subject"
    done: int  # clips finished so far (made, skipped or failed)
    total: int
    seconds: float = 0.0
    message: str = ""


ProgressFn = Callable[[ClipEvent], None]


@dataclass
class RunResult:
    study_dir: Path
    made: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # key -> last error
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failed


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write a file atomically (readers see the old file or the whole new one)."""
    write_bytes(path, data.encode() if isinstance(data, str) else data)


def _sha256(data: bytes | str) -> str:
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


# ---------------------------------------------------------------- the study folder

class StudyDir:
    """Paths of a study folder."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.work = self.root / "work"
        self.records = self.work / "records"
        self.failed = self.work / "failed"
        self.gallery = self.work / "gallery"
        self.subjects = self.work / "subjects"
        self.stimuli = self.root / "stimuli"
        self.orders = self.root / "orders"

    def create(self) -> None:
        if self.root.exists() and any(self.root.iterdir()) and not self.work.is_dir():
            raise ReenactError("exists and is not a study folder (no work/ inside); choose a new or empty folder",
                               self.root)
        for d in (self.records, self.failed, self.gallery, self.subjects, self.stimuli, self.orders):
            d.mkdir(parents=True, exist_ok=True)

    def secret(self, given: bytes | None = None) -> bytes:
        """The key of the blinded ids: random, made on the first run, kept in work/ (with the key)."""
        path = self.work / "secret"
        if given is not None:
            if path.exists() and path.read_bytes() != given.hex().encode():
                raise ReenactError("the study folder was made with another id secret", path)
            write_atomic(path, given.hex())
            return given
        if not path.exists():
            write_atomic(path, secrets.token_hex(16))
        return bytes.fromhex(path.read_text().strip())

    def record(self, key: str) -> Path:
        return self.records / f"{slug(key)}.json"


def _blinded_id(secret: bytes, key: str) -> str:
    return hmac.new(secret, key.encode(), hashlib.sha256).hexdigest()[:12]


# ---------------------------------------------------------------- subjects

def _voice_train_config(plan: Plan):
    return TrainConfig(net=NetConfig(epochs=2)) if plan.settings.voice_training == "quick" else TrainConfig()


def prepare_subjects(plan: Plan, study: StudyDir, progress: ProgressFn | None = None) -> dict[str, float]:
    """Create the plan's inline subjects under work/subjects (once; a later run checks they still match).

    Subjects declared with the same speech share one trained voice model (trained for the first of them)."""
    seconds: dict[str, float] = {}
    trained: dict[tuple, Path] = {}
    config = _voice_train_config(plan)
    for name, spec in plan.subjects.items():
        if not spec.inline:
            continue
        t = time.perf_counter()
        speech_key = tuple(str(p.resolve()) for p in spec.speech)
        folder = study.subjects / name
        if folder.exists():
            subject = load_subject(name, study.subjects)
            if (sha256_file(subject.portrait_path) != sha256_file(spec.portrait)
                    or subject.consent.sha256 != sha256_file(spec.consent)):
                raise ReenactError(f"subject {name} was made from another portrait or consent document than the "
                                   f"plan names; delete {folder} to make it again", folder)
        else:
            if progress:
                progress(ClipEvent(name, "subject", 0, 0, message=f"creating subject {name}"))
            model = spec.voice_model or trained.get(speech_key)
            subject = create_subject(name, spec.portrait, spec.consent, speech=spec.speech or None,
                                     signer=spec.signer, scope=spec.scope, root=study.subjects,
                                     train_config=config, voice_model=model, face_index=spec.face_index)
        if spec.speech and spec.voice_model is None and subject.voice_model_path is not None:
            trained.setdefault(speech_key, subject.voice_model_path)
        if subject.voice_dataset:  # the voice measures compare with it: once here, not in every clip
            cached_speaker_embedding(speaker_paths(subject.folder / subject.voice_dataset))
        seconds[name] = round(time.perf_counter() - t, 3)
    return seconds


def _subject_inputs(name: str, subjects_dir: Path | None) -> dict:
    subject = load_subject(name, subjects_dir)
    subject.check_consent()
    model = subject.voice_model_path
    return {"portrait_sha256": sha256_file(subject.portrait_path),
            "consent_record_sha256": subject.consent.record_sha256(),
            "voice_model_sha256": _model_sha256(model) if model is not None and model.exists() else None}


# ---------------------------------------------------------------- tasks

def build_tasks(plan: Plan, study: StudyDir, secret: bytes) -> list[tuple[ClipTask, dict]]:
    """Each clip's task and its identity (hashes of inputs and settings) for resuming."""
    settings = plan.settings.as_dict()
    subject_inputs: dict[str, dict] = {}
    driver_hash: dict[Path, str] = {}
    out = []
    for clip in plan.clips:
        inputs = {"driver_sha256": driver_hash.setdefault(clip.path, sha256_file(clip.path))}
        subjects_dir = None
        if clip.condition != "real":
            spec = plan.subjects[clip.subject]
            subjects_dir = study.subjects if spec.inline else plan.subjects_dir
            if clip.subject not in subject_inputs:
                subject_inputs[clip.subject] = _subject_inputs(clip.subject, subjects_dir)
            inputs.update(subject_inputs[clip.subject])
        clip_settings = {"condition": clip.condition, "seed": plan.seed, **settings}
        if clip.condition == "real":  # what a real control does not use
            for k in ("motion", "size", "voice", "transpose", "voice_training", "visible_label"):
                clip_settings.pop(k)
        elif clip.condition == "face":
            for k in ("voice", "transpose", "voice_training"):
                clip_settings.pop(k)
        inputs_hash = _sha256(json.dumps(inputs, sort_keys=True))
        settings_hash = _sha256(json.dumps(clip_settings, sort_keys=True))
        clip_id = _blinded_id(secret, clip.key)
        output_id = str(uuid.UUID(bytes=hmac.new(secret, f"mark:{clip.key}:{inputs_hash}:{settings_hash}".encode(),
                                                 hashlib.sha256).digest()[:16], version=4))
        task = ClipTask(key=clip.key, id=clip_id, condition=clip.condition, subject=clip.subject, driver=clip.driver,
                        path=str(clip.path.resolve()), subjects_dir=str(subjects_dir) if subjects_dir else None,
                        settings=settings, output_id=output_id)
        ident = {"key": clip.key, "id": clip_id, "inputs": inputs, "inputs_sha256": inputs_hash,
                 "settings": clip_settings, "settings_sha256": settings_hash, "output_id": output_id}
        out.append((task, ident))
    return out


def is_done(study: StudyDir, ident: dict) -> bool:
    """A clip is done when its record, with the same hashes, and its output file (same sha256) exist."""
    path = study.record(ident["key"])
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    video = study.stimuli / f"{ident['id']}.mp4"
    return (record.get("inputs_sha256") == ident["inputs_sha256"]
            and record.get("settings_sha256") == ident["settings_sha256"]
            and record.get("id") == ident["id"] and video.is_file()
            and record.get("output_sha256") == _file_sha256(video))


def _file_sha256(path: Path) -> str:
    return sha256_file(path)


def save_result(study: StudyDir, ident: dict, result: dict, wall: float) -> dict:
    """Write a finished clip: its MP4, then its gallery data, then its record (the commit)."""
    video = study.stimuli / f"{ident['id']}.mp4"
    write_atomic(video, result["video"])
    qc = result["qc"]
    report = result["report"]
    write_atomic(study.gallery / f"{slug(ident['key'])}.json",
                 json.dumps({"strip": qc["strip"], "f0": qc["f0"],
                             "mouth": (report.get("measures", {}).get("face") or {}).get("series")}))
    face = (report.get("measures") or {}).get("face")
    voice = (report.get("measures") or {}).get("voice")
    record = {
        **ident, "status": "done", "output_sha256": _sha256(result["video"]),
        "condition": ident["settings"]["condition"], "subject": _clip_field(ident["key"], 1),
        "driver": _clip_field(ident["key"], 2),
        "backends": report.get("backends", {}), "watermark_payload": report.get("watermark_payload"),
        "video": {"width": qc["width"], "height": qc["height"], "fps": qc["fps"], "frames": qc["frames"],
                  "duration": qc["duration"], "loudness": qc["loudness"]},
        "verify": qc["verify"],
        "measures": {"face": _face_summary(face), "voice": _voice_summary(voice)},
        "timings": {**result["timings"], "wall": round(wall, 3),
                    "stages": {**report.get("timings", {}), **{f"qc.{k}": v for k, v in qc["seconds"].items()}}},
        "worker": {"host": result.get("host"), "pid": result.get("pid")},
    }
    write_atomic(study.record(ident["key"]), json.dumps(record, indent=2, default=float))
    (study.failed / f"{slug(ident['key'])}.json").unlink(missing_ok=True)
    return record


def _clip_field(key: str, i: int) -> str | None:
    value = key.split("/")[i]
    return None if value == "-" else value


def _face_summary(face: dict | None) -> dict | None:
    if not face:
        return None
    m = face["motion"]
    return {"identity_median": face["identity"]["median"], "identity_samples": face["identity"]["samples"],
            "mouth_corr": m.get("mouth_corr"), "mouth_gain": m.get("mouth_gain"), "yaw_corr": m.get("yaw_corr"),
            "pitch_corr": m.get("pitch_corr"), "expression_error": m.get("expression_error"),
            "jitter_ratio": face["jitter"]["ratio"], "no_face_frames": face["no_face_frames"]}


def _voice_summary(voice: dict | None) -> dict | None:
    if not voice:
        return None
    keys = ("cos_target", "cos_original", "baseline_cos_target", "closer_to_target", "f0_corr", "f0_rmse_cents",
            "rtf")
    return {k: voice.get(k) for k in keys}


# ---------------------------------------------------------------- engines

def _run_local(jobs: list[tuple[ClipTask, dict]], workers: int, retries: int,
               on_result: Callable, on_error: Callable, fn: Callable = run_clip) -> None:
    """Run `fn` (the clip task) on `workers` local processes (spawned: no state shared with this one)."""
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool
    from multiprocessing import get_context

    threads = max(1, (os.cpu_count() or 1) // workers)
    queue = [(task, ident, 0) for task, ident in jobs]
    for task, _, _ in queue:
        task.threads = threads
    pool = ProcessPoolExecutor(workers, mp_context=get_context("spawn"))
    running: dict = {}
    try:
        while queue or running:
            while queue and len(running) < 2 * workers:
                task, ident, attempt = queue.pop(0)
                running[pool.submit(fn, task)] = (task, ident, attempt, time.perf_counter())
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            broken = False
            for future in finished:
                task, ident, attempt, t0 = running.pop(future)
                try:
                    on_result(ident, future.result(), time.perf_counter() - t0)
                except BrokenProcessPool as exc:
                    broken = True
                    _retry_or_fail(queue, task, ident, attempt, retries, f"worker process died ({exc})", on_error)
                except Exception as exc:  # noqa: BLE001 - a failed clip is retried, then listed
                    _retry_or_fail(queue, task, ident, attempt, retries, _message(exc), on_error)
            if broken:
                for future, (task, ident, attempt, _) in running.items():
                    queue.insert(0, (task, ident, attempt))
                running.clear()
                pool.shutdown(wait=False, cancel_futures=True)
                pool = ProcessPoolExecutor(workers, mp_context=get_context("spawn"))
    finally:
        pool.shutdown(wait=not running, cancel_futures=True)


def _retry_or_fail(queue: list, task: ClipTask, ident: dict, attempt: int, retries: int, message: str,
                   on_error: Callable) -> None:
    final = attempt >= retries
    on_error(ident, message, final)
    if not final:
        queue.append((task, ident, attempt + 1))


def _message(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, ReenactError) else f"{type(exc).__name__}: {exc}"


def _run_ray(jobs: list[tuple[ClipTask, dict]], address: str, retries: int, plan: Plan,
             on_result: Callable, on_error: Callable, cpus_per_clip: int = 1) -> dict:
    """Run the tasks on a Ray cluster: `address` "local" starts one on this machine (127.0.0.1), "auto" joins the
    cluster `ray start` made here (or $RAY_ADDRESS), anything else is a cluster's address; when this process is
    connected to Ray already, that connection is used."""
    try:
        import ray
    except ImportError:
        raise ReenactError("--ray needs Ray: pip install 'reenact[ray]' (or pip install ray)") from None
    started = False
    if not ray.is_initialized():
        if address == "local":
            ray.init(_node_ip_address="127.0.0.1", include_dashboard=False, logging_level=logging.WARNING,
                     log_to_driver=False)
        else:
            ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
        started = True
    try:
        neural = plan.settings.motion != "landmark" or plan.settings.voice == "sovits"
        remote = ray.remote(run_clip).options(num_cpus=cpus_per_clip, num_gpus=1 if neural else 0, max_retries=0)
        running = {}

        def submit(task: ClipTask, ident: dict, attempt: int) -> None:
            task.threads = cpus_per_clip
            running[remote.remote(task)] = (task, ident, attempt, time.perf_counter())

        for task, ident in jobs:
            submit(task, ident, 0)
        while running:
            ready, _ = ray.wait(list(running), num_returns=1)
            for ref in ready:
                task, ident, attempt, t0 = running.pop(ref)
                try:
                    on_result(ident, ray.get(ref), time.perf_counter() - t0)
                except Exception as exc:  # noqa: BLE001 - a failed clip is retried, then listed
                    cause = getattr(exc, "cause", None) or exc
                    queue: list = []
                    _retry_or_fail(queue, task, ident, attempt, retries, _message(cause), on_error)
                    for t, i, a in queue:
                        submit(t, i, a)
        return {"ray": ray.__version__, "nodes": len(ray.nodes()),
                "cluster_cpus": ray.cluster_resources().get("CPU", 0)}
    finally:
        if started:
            ray.shutdown()


# ---------------------------------------------------------------- the run

def run_study(plan_path: str | Path, study_dir: str | Path, workers: int = 1, ray: str | None = None,
              retries: int = 1, progress: ProgressFn | None = None, secret: bytes | None = None,
              limit: int | None = None) -> RunResult:
    """Make every clip of the plan that is not done yet; write the study's files.

    `workers`: local processes; `ray`: a Ray address ("local", "auto" or host:port) instead of local workers;
    `retries`: extra tries of a failed clip; `progress(event)`: called as clips finish; `secret`: the key of
    the blinded ids (default: random, made on the first run and kept in work/secret); `limit`: make at most
    this many clips in this run (the rest stay pending). The plan is checked first: a plan with problems
    raises PlanError and nothing is written."""
    plan = check_plan(plan_path)
    if workers < 1:
        raise ReenactError(f"--workers must be at least 1, not {workers}")
    start = time.perf_counter()
    study = StudyDir(Path(study_dir))
    study.create()
    key = study.secret(secret)
    write_atomic(study.work / "plan.toml", plan.path.read_bytes())
    subject_seconds = prepare_subjects(plan, study, progress)
    jobs = build_tasks(plan, study, key)
    write_atomic(study.work / "clips.json", json.dumps([ident for _, ident in jobs], indent=2))

    result = RunResult(study_dir=study.root)
    total = len(jobs)
    pending = []
    for task, ident in jobs:
        if is_done(study, ident):
            result.skipped.append(ident["key"])
            if progress:
                progress(ClipEvent(ident["key"], "skipped", len(result.skipped), total))
        else:
            pending.append((task, ident))
    if limit is not None:
        pending = pending[:limit]

    def finished() -> int:
        return len(result.made) + len(result.skipped) + len(result.failed)

    def on_result(ident: dict, out: dict, wall: float) -> None:
        save_result(study, ident, out, wall)
        result.made.append(ident["key"])
        if progress:
            progress(ClipEvent(ident["key"], "done", finished(), total, seconds=out["timings"]["total"]))

    def on_error(ident: dict, message: str, final: bool) -> None:
        log.warning("%s: %s%s", ident["key"], message, "" if final else " (retrying)")
        if final:
            result.failed[ident["key"]] = message
            write_atomic(study.failed / f"{slug(ident['key'])}.json",
                         json.dumps({"key": ident["key"], "id": ident["id"], "error": message}, indent=2))
        if progress:
            progress(ClipEvent(ident["key"], "failed" if final else "retry", finished(), total, message=message))

    engine: dict = {"engine": "ray" if ray else "local", "workers": workers if not ray else None}
    t_clips = time.perf_counter()
    if pending and ray:
        engine.update(_run_ray(pending, ray, retries, plan, on_result, on_error))
    elif pending:
        _run_local(pending, workers, retries, on_result, on_error)
    clips_wall = time.perf_counter() - t_clips
    result.seconds = time.perf_counter() - start
    finish_study(plan, study, jobs, result, engine, subject_seconds, clips_wall)
    return result


# ---------------------------------------------------------------- outputs

def _records(study: StudyDir, jobs: Iterable[tuple[ClipTask, dict]]) -> list[dict]:
    out = []
    for _, ident in jobs:
        if is_done(study, ident):
            out.append(json.loads(study.record(ident["key"]).read_text()))
    return out


def _csv(rows: list[dict], columns: list[str]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def finish_study(plan: Plan, study: StudyDir, jobs: list, result: RunResult, engine: dict,
                 subject_seconds: dict, clips_wall: float) -> None:
    """stimuli.csv, key.csv, orders (when every clip is done), study.json and the gallery, from the records."""
    records = sorted(_records(study, jobs), key=lambda r: r["id"])
    write_atomic(study.root / "stimuli.csv", _csv(
        [{"id": r["id"], "file": f"stimuli/{r['id']}.mp4", "duration": r["video"]["duration"],
          "width": r["video"]["width"], "height": r["video"]["height"], "fps": r["video"]["fps"]} for r in records],
        ["id", "file", "duration", "width", "height", "fps"]))
    key_rows = []
    for r in records:
        backends = r.get("backends") or {}
        key_rows.append({"id": r["id"], "subject": r["subject"] or "", "driver": r["driver"],
                         "condition": r["condition"], "motion_backend": backends.get("motion") or "",
                         "voice_backend": backends.get("voice") or "",
                         "settings": json.dumps(r["settings"], sort_keys=True), **r["inputs"],
                         "inputs_sha256": r["inputs_sha256"], "settings_sha256": r["settings_sha256"],
                         "output_id": r["output_id"], "seed": plan.seed, "key": r["key"]})
    write_atomic(study.root / "key.csv", _csv(key_rows, KEY_COLUMNS))

    complete = len(records) == len(jobs)
    if complete:
        person = {c.key: c.person for c in plan.clips}
        items = [Item(r["id"], r["condition"], person[r["key"]]) for r in records]
        orders = make_orders(items, plan.participants, plan.per_participant, plan.seed)
        for old in study.orders.glob("participant_*.csv"):
            old.unlink()
        for p, order in enumerate(orders, 1):
            write_atomic(study.orders / f"participant_{p:03d}.csv",
                         _csv([{"position": i, "id": x.id} for i, x in enumerate(order, 1)], ["position", "id"]))

    study_json = study.root / "study.json"
    try:
        previous = json.loads(study_json.read_text())
    except (OSError, ValueError):
        previous = {}
    made = [r for r in records if r["key"] in result.made]
    this_run = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - result.seconds)),
                **engine, "made": len(result.made), "skipped": len(result.skipped), "failed": len(result.failed),
                "seconds": round(result.seconds, 3), "clips_seconds": round(clips_wall, 3),
                "subjects_seconds": subject_seconds,
                "clips_per_hour": round(3600 * len(made) / clips_wall, 2) if made and clips_wall > 0 else None}
    data = {
        "plan": {"file": str(plan.path), "sha256": plan.sha256, "name": plan.name, "seed": plan.seed,
                 "participants": plan.participants, "clips_per_participant": plan.per_participant},
        "versions": _versions(engine),
        "clips": {"total": len(jobs), "done": len(records), "failed": sorted(result.failed),
                  "pending": len(jobs) - len(records) - len(result.failed)},
        "orders": complete,
        "timings": {r["key"]: r["timings"] for r in sorted(records, key=lambda r: r["key"])},
        "runs": (previous.get("runs") or [])[-49:] + [this_run],
    }
    write_atomic(study_json, json.dumps(data, indent=2))
    write_gallery(plan, study, records, result.failed)


def _versions(engine: dict) -> dict:
    import numpy
    import torch

    import reenact

    out = {"reenact": reenact.__version__, "python": platform.python_version(), "numpy": numpy.__version__,
           "torch": torch.__version__, "platform": platform.platform()}
    if engine.get("ray"):
        out["ray"] = engine["ray"]
    return out


def study_status(study_dir: str | Path) -> dict:
    """Done, failed and pending clips of a study folder (as of its last run's plan)."""
    study = StudyDir(Path(study_dir))
    clips_file = study.work / "clips.json"
    if not clips_file.is_file():
        raise ReenactError("is not a study folder (no work/clips.json); run `reenact study run` first", study.root)
    idents = json.loads(clips_file.read_text())
    done, failed, pending = [], {}, []
    for ident in idents:
        if is_done(study, ident):
            done.append(ident["key"])
            continue
        f = study.failed / f"{slug(ident['key'])}.json"
        if f.is_file():
            failed[ident["key"]] = json.loads(f.read_text()).get("error", "")
        else:
            pending.append(ident["key"])
    return {"study": str(study.root), "total": len(idents), "done": done, "failed": failed, "pending": pending}
