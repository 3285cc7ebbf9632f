"""Study sets: a blinded, balanced set of stimuli built from a TOML plan (docs/study.md).

    from reenact.study import check_plan, run_study, study_status
    plan = check_plan("study.toml")                  # PlanError lists every problem
    result = run_study("study.toml", "out/", workers=2, progress=print)
    study_status("out/")                             # done / failed / pending
"""

from reenact.study.plan import Clip, Plan, PlanError, check_plan, load_plan
from reenact.study.run import ClipEvent, RunResult, run_study, study_status

__all__ = ["Clip", "ClipEvent", "Plan", "PlanError", "RunResult", "check_plan", "load_plan", "run_study",
           "study_status"]
