"""Benchmark `reenact study run`: clips per hour on 1 and 2 local workers and on a local Ray cluster, Ray's
overhead per clip, and what share of each clip's time the quality measures and the marks' check take.

The plan is examples/study.toml (shared assets) cut to `--clips` clips (a third of them real controls, in
the plan's order). Its subjects are made once in a first study folder (voice training is not clip time) and
copied into every run's folder; each engine then makes the same clips from scratch with the same id secret.

    python benchmarks/study.py                         # 6 clips: local 1, local 2, Ray 1 CPU, Ray 2 CPUs
    python benchmarks/study.py --clips 12 --engines local1 ray1
    python benchmarks/study.py --plan my_plan.toml --out /tmp/bench

Ray's overhead per clip is measured with one CPU (clips one after another, as with one local worker):
(wall time of the clips - the tasks' own time) / clips, for Ray and for the local pool; the difference is
what Ray adds, and is compared with the mean clip time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PLAN = REPO / "examples" / "study.toml"
SECRET = bytes(range(16))


def cut_plan(plan: Path, clips: int, out: Path) -> Path:
    """A copy of the plan making only its first `clips` clips (as listed pairs and real controls)."""
    import tomllib

    from reenact.study.plan import load_plan

    loaded = load_plan(plan)
    real = [c for c in loaded.clips if c.condition == "real"][: clips // 3]
    keep = [c for c in loaded.clips if c.condition != "real"][: clips - len(real)] + real
    text = plan.read_text()
    data = tomllib.loads(text)
    fakes = [[c.subject, c.driver] for c in keep if c.condition == "fake"]
    faces = [[c.subject, c.driver] for c in keep if c.condition == "face"]
    reals = {c.driver for c in keep if c.condition == "real"}
    lines = []
    skip = False
    for line in text.splitlines():  # drop the [conditions] table and unused [[real]] entries; keep the rest
        stripped = line.strip()
        if stripped.startswith("["):
            skip = stripped == "[conditions]"
        if not skip:
            lines.append(line)
    text = "\n".join(lines)
    for r in data.get("real", []):
        if r["name"] not in reals:
            block = f'[[real]]\nname = "{r["name"]}"\npath = "{r["path"]}"'
            text = text.replace(block, "")
    text += f"\n[conditions]\nfake = {json.dumps(fakes)}\n" + (f"face = {json.dumps(faces)}\n" if faces else "")
    base = plan.parent.resolve()

    def absolute(match: re.Match) -> str:  # paths stay valid from the new place
        value = match.group(1)
        if value.startswith("/") or not (list(base.glob(value)) if "*" in value else (base / value).exists()):
            return match.group(0)
        return f'"{base / value}"'

    text = re.sub(r'"([^"\n]+)"', absolute, text)
    text = re.sub(r"clips_per_participant = (\d+)", lambda m: f"clips_per_participant = {min(int(m.group(1)), len(keep))}",
                  text)
    path = out / "plan.toml"
    path.write_text(text)
    return path


def run(engine: str, plan: Path, out: Path, subjects: Path) -> dict:
    from reenact.study import run_study

    folder = out / engine
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(subjects, folder / "work" / "subjects")
    ray = None
    if engine.startswith("ray"):
        import ray

        ray.init(_node_ip_address="127.0.0.1", num_cpus=int(engine[3:]), include_dashboard=False,
                 log_to_driver=False, runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}})
    try:
        t = time.perf_counter()
        result = run_study(plan, folder, workers=int(engine[5:]) if engine.startswith("local") else 1,
                           ray="auto" if ray else None, secret=SECRET)
        wall = time.perf_counter() - t
    finally:
        if ray:
            ray.shutdown()
    study = json.loads((folder / "study.json").read_text())
    this = study["runs"][-1]
    records = [json.loads(p.read_text()) for p in (folder / "work" / "records").glob("*.json")]
    task = sum(r["timings"]["total"] for r in records)
    n = len(records)
    return {"engine": engine, "clips": n, "failed": len(result.failed), "wall": round(wall, 1),
            "clips_seconds": this["clips_seconds"], "clips_per_hour": this["clips_per_hour"],
            "task_seconds_mean": round(task / n, 2),
            "overhead_per_clip": round((this["clips_seconds"] - task) / n, 2),
            "measures_share": round(sum(r["timings"]["measures"] for r in records) / task, 3),
            "verify_share": round(sum(r["timings"]["verify"] for r in records) / task, 3),
            "fake_measures_share": round(sum(r["timings"]["measures"] for r in records if r["condition"] != "real")
                                         / max(sum(r["timings"]["total"] for r in records
                                                   if r["condition"] != "real"), 1e-9), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--plan", type=Path, default=PLAN)
    parser.add_argument("--clips", type=int, default=6)
    parser.add_argument("--out", type=Path, default=Path("/tmp/reenact-bench-study"))
    parser.add_argument("--engines", nargs="+", default=["local1", "local2", "ray1", "ray2"],
                        help="local1, local2 (local worker processes), ray1, ray2 (a local Ray cluster's CPUs)")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO / "src"))
    from reenact.study import run_study

    args.out.mkdir(parents=True, exist_ok=True)
    plan = cut_plan(args.plan, args.clips, args.out)
    base = args.out / "subjects-run"
    if not (base / "work" / "subjects").is_dir():  # the subjects, once (not clip time)
        t = time.perf_counter()
        run_study(plan, base, limit=0, secret=SECRET)
        print(f"subjects made in {time.perf_counter() - t:.0f} s", flush=True)
    rows = []
    for engine in args.engines:
        rows.append(run(engine, plan, args.out, base / "work" / "subjects"))
        print(json.dumps(rows[-1]), flush=True)
    print(f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"load {os.getloadavg()[0]:.1f}; {args.clips} clips of {args.plan.name}")
    print(f"{'engine':8} {'clips/h':>8} {'clip s':>7} {'overhead s/clip':>16} {'measures':>9} {'verify':>7}")
    for r in rows:
        print(f"{r['engine']:8} {r['clips_per_hour']:>8} {r['task_seconds_mean']:>7} {r['overhead_per_clip']:>16} "
              f"{r['measures_share']:>9.1%} {r['verify_share']:>7.1%}")
    by = {r["engine"]: r for r in rows}
    if "ray1" in by and "local1" in by:
        extra = by["ray1"]["overhead_per_clip"] - by["local1"]["overhead_per_clip"]
        print(f"Ray's overhead per clip (1 CPU, against one local worker): {extra:+.2f} s = "
              f"{extra / by['local1']['task_seconds_mean']:+.1%} of a clip's time")


if __name__ == "__main__":
    main()
