"""A study plan: which clips to make, from which subjects and drivers, with which settings.

A plan is a TOML file (docs/study.md). `load_plan` reads it and `check_plan` looks for every problem at once
(missing files, unknown names, consent that does not cover the study, drivers without a face or speech,
settings that conflict), so a plan is fixed in one round before any work. Paths in a plan are relative to
the plan file.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import re
import tomllib
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np

from reenact.errors import ReenactError
from reenact.face.detect import FaceDetector
from reenact.media.audio import read_audio
from reenact.media.image import load_image
from reenact.media.video import iter_frames, probe
from reenact.study.orders import orders_possible
from reenact.subject import DEFAULT_SCOPE, NAME_PATTERN, load_subject
from reenact.voice.convert import parse_transpose

log = logging.getLogger(__name__)

CONDITIONS = ("fake", "face", "real")  # fake: face and voice; face: animated face, driver's voice; real: control
VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v")
MOTION_BACKENDS = ("landmark", "lia", "liveportrait")
VOICE_BACKENDS = ("world", "sovits")
VOICE_TRAINING = ("quick", "full")


class PlanError(ReenactError):
    """A plan with problems; `problems` lists every one of them."""

    def __init__(self, path: Path, problems: list[str]) -> None:
        self.problems = problems
        super().__init__(f"{len(problems)} problem{'s' if len(problems) != 1 else ''} in the plan:\n  "
                         + "\n  ".join(problems), path)


@dataclass
class SubjectSpec:
    """A subject of the plan: an existing subject (name only) or one declared inline (portrait and consent)."""

    name: str
    portrait: Path | None = None
    consent: Path | None = None
    speech: list[Path] = field(default_factory=list)
    voice_model: Path | None = None
    signer: str | None = None
    scope: str = DEFAULT_SCOPE
    face_index: int = 0

    @property
    def inline(self) -> bool:
        return self.portrait is not None


@dataclass
class VideoSpec:
    """A driver, or a real control clip (of a plan subject, or of someone else)."""

    name: str
    path: Path
    subject: str | None = None  # real controls: the plan subject shown, if any


@dataclass
class Settings:
    """What every clip of the study shares."""

    fps: Fraction = Fraction(25)
    width: int = 512
    height: int = 512
    loudness: float = -23.0  # LUFS (EBU R128)
    duration: float | None = None  # seconds from each driver's start; None: the whole driver
    crf: int = 18
    preset: str = "veryfast"
    visible_label: bool = True
    motion: str = "landmark"
    size: int | str = "auto"  # the motion backend's crop size
    voice: str = "world"
    transpose: str = "auto"
    voice_training: str = "quick"  # inline subjects: "quick" (a short offline training) or "full"

    def as_dict(self) -> dict:
        d = asdict(self)
        d["fps"] = str(self.fps)
        return d


@dataclass
class QC:
    """Thresholds of the gallery's flags."""

    identity_max: float = 0.6  # dlib distance, source against output (0.6: same person)
    mouth_corr_min: float = 0.5  # mouth opening, output against driver
    loudness_tolerance: float = 1.0  # LU from the study's loudness


@dataclass
class Clip:
    """One stimulus to make."""

    key: str  # condition/subject/driver: unique, readable, kept in key.csv only
    condition: str
    subject: str | None  # fake/face: the subject animated; real: the plan subject shown, if any
    driver: str  # the driver's (or real control's) name
    path: Path  # the driver's (or real control's) file

    @property
    def person(self) -> str:
        """Who the clip shows, for orders (no two clips of one person in a row)."""
        return self.subject or f"real:{self.driver}"


@dataclass
class Plan:
    path: Path
    sha256: str
    name: str
    seed: int
    participants: int
    clips_per_participant: int | None
    consent_scope: str
    subjects_dir: Path | None
    subjects: dict[str, SubjectSpec]
    drivers: dict[str, VideoSpec]
    reals: dict[str, VideoSpec]
    settings: Settings
    qc: QC
    pairs: dict[str, list[tuple[str, str]]]  # condition -> (subject, driver)
    clips: list[Clip]

    @property
    def per_participant(self) -> int:
        return self.clips_per_participant or len(self.clips)


def slug(key: str) -> str:
    """A file name for a clip key (its readable parts plus a short hash, so two keys never collide)."""
    readable = re.sub(r"[^A-Za-z0-9_.-]+", "_", key.replace("/", "__"))[:80]
    return f"{readable}-{hashlib.sha256(key.encode()).hexdigest()[:8]}"


# ---------------------------------------------------------------- reading

_SECTIONS = {
    "study": {"name", "seed", "participants", "clips_per_participant", "consent_scope", "subjects_dir"},
    "output": {"fps", "width", "height", "loudness", "duration", "crf", "preset", "visible_label"},
    "backends": {"motion", "size", "voice", "transpose", "voice_training"},
    "qc": {"identity_max", "mouth_corr_min", "loudness_tolerance"},
    "subjects": {"name", "portrait", "consent", "speech", "voice_model", "signer", "scope", "face_index"},
    "drivers": {"name", "path"},
    "real": {"name", "path", "subject"},
    "conditions": {"fake", "face"},
}


class _Reader:
    """Reads values of a plan, noting each problem instead of stopping at the first."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.base = path.parent
        self.problems: list[str] = []

    def problem(self, where: str, message: str) -> None:
        self.problems.append(f"{where}: {message}")

    def get(self, table: dict, key: str, kind, default, where: str):
        if key not in table:
            return default
        value = table[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if float in kinds and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            names = " or ".join(k.__name__ for k in kinds)
            self.problem(where, f"{key} must be {'an' if names[0] in 'aeiou' else 'a'} {names}, not {value!r}")
            return default
        return value

    def file(self, value: str | None, where: str, what: str, folder_ok: bool = False) -> Path | None:
        if value is None:
            return None
        p = Path(value).expanduser()
        p = p if p.is_absolute() else (self.base / p)
        if not p.exists():
            self.problem(where, f"{what} not found: {p}")
            return None
        if p.is_dir() and not folder_ok:
            self.problem(where, f"{what} is a folder, expected a file: {p}")
            return None
        return p

    def files(self, value: str, where: str, what: str) -> list[Path]:
        """A file or folder, or a glob pattern (e.g. corpus/slt_train/0[1-4]_*.flac) matching at least one."""
        if not any(ch in value for ch in "*?["):
            p = self.file(value, where, what, folder_ok=True)
            return [p] if p is not None else []
        pattern = Path(value).expanduser()
        base, rest = (Path(pattern.anchor), str(pattern.relative_to(pattern.anchor))) if pattern.is_absolute() \
            else (self.base, value)
        found = sorted(base.glob(rest))
        if not found:
            self.problem(where, f"{what}: no file matches {value!r} (relative to {self.base})")
        return found

    def unknown_keys(self, table: dict, section: str, where: str) -> None:
        for key in table:
            if key not in _SECTIONS[section]:
                self.problem(where, f"unknown setting {key!r} (known: {', '.join(sorted(_SECTIONS[section]))})")


def load_plan(path: str | Path) -> Plan:
    """Read a plan; raise PlanError listing every problem found while reading (`check_plan` checks more)."""
    plan, problems = _read_plan(Path(path))
    if problems:
        raise PlanError(Path(path), problems)
    return plan


def _read_plan(path: Path) -> tuple[Plan, list[str]]:
    """The plan as far as it can be read, and the problems found reading it."""
    if not path.is_file():
        raise ReenactError("plan not found" if not path.exists() else "plan is not a file", path)
    raw = path.read_bytes()
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise PlanError(path, [f"not valid TOML: {exc}"]) from None
    r = _Reader(path)
    for section in data:
        if section not in _SECTIONS:
            r.problem(f"[{section}]", f"unknown section (known: {', '.join(sorted(_SECTIONS))})")

    def table(name: str) -> dict:
        t = data.get(name, {})
        if not isinstance(t, dict):
            r.problem(f"[{name}]", "must be a table")
            return {}
        r.unknown_keys(t, name, f"[{name}]")
        return t

    study, output, backends, qc_t, conditions = (table(n) for n in ("study", "output", "backends", "qc",
                                                                      "conditions"))
    name = r.get(study, "name", str, path.stem, "[study]")
    seed = r.get(study, "seed", int, 0, "[study]")
    participants = r.get(study, "participants", int, 1, "[study]")
    per = r.get(study, "clips_per_participant", int, None, "[study]")
    scope = r.get(study, "consent_scope", str, "perception studies", "[study]")
    subjects_dir = r.file(r.get(study, "subjects_dir", str, None, "[study]"), "[study]", "subjects_dir", True)

    s = Settings()
    fps = r.get(output, "fps", (int, float, str), 25, "[output]")
    try:
        s.fps = Fraction(str(fps)).limit_denominator(1001)
    except (ValueError, ZeroDivisionError):
        r.problem("[output]", f"fps must be a number such as 25 or \"30000/1001\", not {fps!r}")
    s.width = r.get(output, "width", int, s.width, "[output]")
    s.height = r.get(output, "height", int, s.height, "[output]")
    s.loudness = r.get(output, "loudness", float, s.loudness, "[output]")
    s.duration = r.get(output, "duration", float, None, "[output]")
    s.crf = r.get(output, "crf", int, s.crf, "[output]")
    s.preset = r.get(output, "preset", str, s.preset, "[output]")
    s.visible_label = r.get(output, "visible_label", bool, s.visible_label, "[output]")
    s.motion = r.get(backends, "motion", str, s.motion, "[backends]")
    size = r.get(backends, "size", (int, str), s.size, "[backends]")
    s.size = size
    s.voice = r.get(backends, "voice", str, s.voice, "[backends]")
    s.transpose = str(r.get(backends, "transpose", (str, int, float), s.transpose, "[backends]"))
    s.voice_training = r.get(backends, "voice_training", str, s.voice_training, "[backends]")
    qc = QC(identity_max=r.get(qc_t, "identity_max", float, QC.identity_max, "[qc]"),
            mouth_corr_min=r.get(qc_t, "mouth_corr_min", float, QC.mouth_corr_min, "[qc]"),
            loudness_tolerance=r.get(qc_t, "loudness_tolerance", float, QC.loudness_tolerance, "[qc]"))

    def entries(section: str) -> list[dict]:
        value = data.get(section, [])
        if not isinstance(value, list) or not all(isinstance(e, dict) for e in value):
            r.problem(f"[[{section}]]", "must be an array of tables ([[" + section + "]] entries)")
            return []
        return value

    subjects: dict[str, SubjectSpec] = {}
    for i, e in enumerate(entries("subjects")):
        where = f"[[subjects]] #{i + 1}"
        r.unknown_keys(e, "subjects", where)
        sname = r.get(e, "name", str, None, where)
        if sname is None:
            r.problem(where, "needs a name")
            continue
        where = f"subject {sname}"
        if not NAME_PATTERN.match(sname):
            r.problem(where, "name must be 1-64 letters, digits, '.', '_' or '-'")
        if sname in subjects:
            r.problem(where, "declared twice")
        speech = r.get(e, "speech", (list, str), [], where)
        speech = [speech] if isinstance(speech, str) else speech
        spec = SubjectSpec(name=sname, signer=r.get(e, "signer", str, None, where),
                           scope=r.get(e, "scope", str, DEFAULT_SCOPE, where),
                           face_index=r.get(e, "face_index", int, 0, where))
        if "portrait" in e or "consent" in e:  # declared inline
            if "portrait" not in e or "consent" not in e:
                r.problem(where, "an inline subject needs both portrait and consent")
            spec.portrait = r.file(r.get(e, "portrait", str, None, where), where, "portrait") or Path("<missing>")
            spec.consent = r.file(r.get(e, "consent", str, None, where), where, "consent document")
            spec.speech = [p for x in speech for p in r.files(str(x), where, "speech")]
            spec.voice_model = r.file(r.get(e, "voice_model", str, None, where), where, "voice model", True)
        elif speech or "voice_model" in e:
            r.problem(where, "speech and voice_model belong to inline subjects (with portrait and consent)")
        subjects[sname] = spec

    def videos(section: str) -> dict[str, VideoSpec]:
        out: dict[str, VideoSpec] = {}
        for i, e in enumerate(entries(section)):
            where = f"[[{section}]] #{i + 1}"
            r.unknown_keys(e, section, where)
            p = r.file(r.get(e, "path", str, None, where), where, "video", folder_ok=True)
            if "path" not in e:
                r.problem(where, "needs a path")
            vname = r.get(e, "name", str, None, where)
            subject = r.get(e, "subject", str, None, where) if section == "real" else None
            if p is None:
                if vname:
                    out.setdefault(vname, VideoSpec(vname, Path("<missing>"), subject))
                continue
            files = sorted(f for f in p.iterdir() if f.suffix.lower() in VIDEO_SUFFIXES) if p.is_dir() else [p]
            if p.is_dir() and not files:
                r.problem(where, f"folder has no videos ({', '.join(VIDEO_SUFFIXES)}): {p}")
            for f in files:
                n = (f"{vname}-{f.stem}" if vname else f.stem) if p.is_dir() else (vname or f.stem)
                if n in out:
                    r.problem(where, f"name {n!r} used twice; give each entry a name")
                out[n] = VideoSpec(n, f, subject)
        return out

    drivers, reals = videos("drivers"), videos("real")
    for n in set(drivers) & set(reals):
        r.problem(f"real {n}", "has the name of a driver; give it another name")

    pairs: dict[str, list[tuple[str, str]]] = {}
    for cond in ("fake", "face"):
        value = conditions.get(cond)
        if value is None:
            continue
        where = f"[conditions] {cond}"
        if value == "all":
            pairs[cond] = [(a, b) for a in subjects for b in drivers]
        elif isinstance(value, list) and all(isinstance(x, list) and len(x) == 2 and all(isinstance(y, str) for y in x)
                                             for x in value):
            pairs[cond] = [(a, b) for a, b in value]
            for a, b in value:
                if a not in subjects:
                    r.problem(where, f"unknown subject {a!r} (subjects: {', '.join(subjects) or 'none'})")
                if b not in drivers:
                    r.problem(where, f"unknown driver {b!r} (drivers: {', '.join(drivers) or 'none'})")
            if len(set(pairs[cond])) != len(pairs[cond]):
                r.problem(where, "lists a pair twice")
        else:
            r.problem(where, 'must be "all" or a list of [subject, driver] pairs')
    clips = [Clip(f"{c}/{a}/{b}", c, a, b, drivers[b].path) for c, ps in pairs.items() for a, b in ps
             if a in subjects and b in drivers]
    clips += [Clip(f"real/{v.subject or '-'}/{n}", "real", v.subject, n, v.path) for n, v in reals.items()]
    plan = Plan(path=path, sha256=hashlib.sha256(raw).hexdigest(), name=name, seed=seed, participants=participants,
                clips_per_participant=per, consent_scope=scope, subjects_dir=subjects_dir, subjects=subjects,
                drivers=drivers, reals=reals, settings=s, qc=qc, pairs=pairs, clips=clips)
    return plan, r.problems


# ---------------------------------------------------------------- checking

def check_plan(path: str | Path) -> Plan:
    """Load and check a plan; raise PlanError naming every problem (reading and checking) at once."""
    path = Path(path)
    plan, problems = _read_plan(path)
    problems += plan_problems(plan)
    if problems:
        raise PlanError(path, list(dict.fromkeys(problems)))
    return plan


def plan_problems(plan: Plan) -> list[str]:
    """Every problem of a readable plan: settings, subjects and their consent, drivers, real controls."""
    p: list[str] = []
    s = plan.settings
    if s.fps <= 0 or s.fps > 120:
        p.append(f"[output]: fps must be between 0 and 120, not {s.fps}")
    for k in ("width", "height"):
        v = getattr(s, k)
        if v < 64 or v > 4096 or v % 2:
            p.append(f"[output]: {k} must be an even number of pixels from 64 to 4096, not {v}")
    if not -70 <= s.loudness <= -5:
        p.append(f"[output]: loudness must be between -70 and -5 LUFS, not {s.loudness}")
    if s.duration is not None and s.duration <= 0:
        p.append(f"[output]: duration must be positive, not {s.duration}")
    if not 0 <= s.crf <= 51:
        p.append(f"[output]: crf must be 0 to 51, not {s.crf}")
    if s.motion not in MOTION_BACKENDS:
        p.append(f"[backends]: motion must be one of {', '.join(MOTION_BACKENDS)}, not {s.motion!r}")
    if s.size not in ("auto", 256, 512):
        p.append(f"[backends]: size must be 256, 512 or \"auto\", not {s.size!r}")
    if s.voice not in VOICE_BACKENDS:
        p.append(f"[backends]: voice must be one of {', '.join(VOICE_BACKENDS)}, not {s.voice!r}")
    if s.voice_training not in VOICE_TRAINING:
        p.append(f"[backends]: voice_training must be quick or full, not {s.voice_training!r}")
    try:
        parse_transpose(s.transpose)
    except ReenactError as exc:
        p.append(f"[backends]: transpose: {exc.message}")
    if plan.participants < 1:
        p.append(f"[study]: participants must be at least 1, not {plan.participants}")
    if not plan.clips:
        p.append("[conditions]: the plan makes no clips (set fake or face, or list [[real]] controls)")
    per = plan.clips_per_participant
    if per is not None and not 1 <= per <= len(plan.clips):
        p.append(f"[study]: clips_per_participant is {per}, but the plan makes {len(plan.clips)} clips "
                 f"(at most {len(plan.clips)})")
    elif plan.clips:
        if not orders_possible(plan.clips, max(plan.participants, 1), plan.per_participant, plan.seed):
            p.append("[study]: one person is in too many clips for orders with no two clips of one person in a row; "
                     "add clips of others or show fewer clips per participant")
    p += _subject_problems(plan)
    p += _video_problems(plan)
    return p


def _subject_problems(plan: Plan) -> list[str]:
    p: list[str] = []
    used = {c.subject for c in plan.clips if c.condition in ("fake", "face")}
    revoiced = {c.subject for c in plan.clips if c.condition == "fake"}
    scope = plan.consent_scope.lower()
    for name, spec in plan.subjects.items():
        where = f"subject {name}"
        if spec.inline:
            if spec.scope and scope not in spec.scope.lower():
                p.append(f"{where}: consent scope {spec.scope!r} does not cover this study "
                         f"(it must mention {plan.consent_scope!r}, the plan's consent_scope)")
            if spec.consent is not None and spec.consent.is_file() and spec.consent.stat().st_size == 0:
                p.append(f"{where}: consent document is empty: {spec.consent}")
            if spec.portrait is not None and spec.portrait.is_file():
                p += _portrait_problems(spec.portrait, spec.face_index, where)
            if name in revoiced and not spec.speech and spec.voice_model is None:
                p.append(f"{where}: condition fake re-voices the driver, but the subject has no speech and no "
                         f"voice_model (give one, or use condition face)")
            continue
        try:
            subject = load_subject(name, plan.subjects_dir)
        except ReenactError as exc:
            p.append(f"{where}: {exc.message} (or declare it inline with portrait and consent)")
            continue
        try:
            subject.check_consent()
        except ReenactError as exc:
            p.append(f"{where}: {exc.message}")
        if scope not in subject.consent.scope.lower():
            p.append(f"{where}: consent scope {subject.consent.scope!r} does not cover this study "
                     f"(it must mention {plan.consent_scope!r})")
        if name in revoiced:
            model = subject.voice_model_path
            if model is None or not model.exists():
                p.append(f"{where}: condition fake re-voices the driver, but the subject has no voice model")
            elif plan.settings.voice == "sovits" and not model.is_dir() or plan.settings.voice == "world" and model.is_dir():
                p.append(f"{where}: the subject's voice model is not a {plan.settings.voice} model "
                         f"([backends] voice = {plan.settings.voice!r})")
    for name in used - set(plan.subjects):
        p.append(f"subject {name}: unknown")
    for r in plan.reals.values():
        if r.subject is not None and r.subject not in plan.subjects:
            p.append(f"real {r.name}: subject {r.subject!r} is not a subject of the plan (leave it out for "
                     f"someone else)")
    return p


def _portrait_problems(path: Path, face_index: int, where: str) -> list[str]:
    try:
        faces = FaceDetector().detect(load_image(path, 1280), upsample=1)
    except ReenactError as exc:
        return [f"{where}: portrait {exc.message}: {path}"]
    if len(faces) <= face_index:
        return [f"{where}: no face found in the portrait{'' if face_index == 0 else f' (face_index {face_index})'}: "
                f"{path}"]
    return []


def _video_problems(plan: Plan) -> list[str]:
    """Each driver must show a face (and, for fake, have speech); every video must be long enough."""
    p: list[str] = []
    s = plan.settings
    speech_needed = {c.driver for c in plan.clips if c.condition == "fake"}
    used = {c.driver for c in plan.clips if c.condition in ("fake", "face")}
    for kind, videos in (("driver", plan.drivers), ("real", plan.reals)):
        for name, v in videos.items():
            if kind == "driver" and name not in used or str(v.path) == "<missing>":
                continue
            where = f"{kind} {name}"
            try:
                seconds, has_face, speech = _probe_video(v.path, s.duration)
            except ReenactError as exc:
                p.append(f"{where}: {exc.message}: {v.path}")
                continue
            if s.duration is not None and seconds + 0.5 / float(s.fps) < s.duration:
                p.append(f"{where}: is {seconds:.2f} s long, shorter than [output] duration {s.duration:g} s: {v.path}")
            if kind == "driver" and not has_face:
                p.append(f"{where}: no face found in its first frames: {v.path}")
            if (kind == "driver" and name in speech_needed or kind == "real") and not speech:
                what = "condition fake re-voices its speech" if kind == "driver" else "the fakes have sound"
                p.append(f"{where}: has no speech (no audio track, or a silent one), but {what}: {v.path}")
    return p


def _probe_video(path: Path, duration: float | None) -> tuple[float, bool, bool]:
    """(seconds, a face in one of the first frames, audible sound in the part used)."""
    info = probe(path)
    seconds = info.duration or info.frame_count / float(info.fps)
    detector = FaceDetector()
    step = max(1, int(round(float(info.fps) / 2)))
    has_face = any(detector.boxes(f, upsample=1 if max(f.shape[:2]) <= 400 else 0)
                   for f in itertools.islice(iter_frames(path), 0, 3 * step, step))
    speech = False
    if info.has_audio:
        audio = read_audio(path, 16000, mono=True)
        x = audio.mono()[: int((duration or seconds) * 16000)]
        speech = x.size > 1600 and float(np.sqrt(np.mean(x.astype(np.float64) ** 2))) > 1e-3
    return seconds, has_face, speech
