"""``bus-nnunet study run|status|report STUDY.toml``: a cross-validation study -- datasets x plans x
trainers x folds -- through nnU-Net's own commands (convert, ``nnUNetv2_plan_and_preprocess``,
``nnUNetv2_train``, ``nnUNetv2_find_best_configuration``, ``bus-nnunet cv-report``), on this
machine or on SLURM (submitit), resumable: finished folds are never trained again, and what was
computed from folds trained since is computed again.

See the README's "Studies" section and ``examples/study_breast.toml``."""
from __future__ import annotations

import argparse

#: ``study run``'s exit status when it ends with jobs left to another study run (sysexits.h's
#: EX_TEMPFAIL: nothing failed, try again later); 0 means every job is done, 1 that some failed
EXIT_LEFT_TO_ANOTHER_RUN = 75
#: the states ``status`` explains below its table, with the log of a failure
EXPLAINED = ("failed", "cancelled", "stale", "blocked")


def register(subparsers) -> None:
    p = subparsers.add_parser("study", help="run a cross-validation study (local GPUs or SLURM), resumable",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="study_command", metavar="ACTION", required=True)
    run = sub.add_parser("run", help="run (or continue) every job that is not done")
    run.add_argument("study_file")
    run.add_argument("--executor", default=None, metavar="KIND",
                     help="run on this executor instead of the study file's [executor] kind: local, slurm, "
                          "submitit-local (a SLURM study's submission, run on this machine), submitit-debug, or one a "
                          "module registers (docs/extending.md)")
    run.set_defaults(func=run_study)
    status = sub.add_parser("status", help="dataset x plans x trainer x fold: done / running / failed / stale / "
                                           "cancelled / pending")
    status.add_argument("study_file")
    status.set_defaults(func=show_status)
    report = sub.add_parser("report", help="write summary.md and summary.html from what is finished")
    report.add_argument("study_file")
    report.set_defaults(func=write_summary)


def run_study(args) -> int:
    from bus_nnunet.errors import UserError
    from bus_nnunet.study.checks import require_valid
    from bus_nnunet.study.run import StudyRun
    run = StudyRun.load(args.study_file, args.executor)
    require_valid(run)  # every problem of the file at once, before anything is written
    mixed = run.budget_mismatches()
    if mixed:
        raise UserError("the study's schedule differs from what these folds were trained with; a study does not "
                        "mix budgets. Restore the [schedule] or delete those fold folders:\n  " + "\n  ".join(mixed))
    run.layout.output.mkdir(parents=True, exist_ok=True)
    outcome = run.executor()(run, run.jobs)
    if "submitted" in outcome.values():  # a scheduler has them now: this command ends here
        print(f"follow it with: bus-nnunet study status {args.study_file}")
        return 0
    rc = _print_status(run)
    if "failed" in outcome.values():
        return 1
    left = [k for k, state in outcome.items() if state in ("running", "blocked")]
    not_done = [j.key for j in run.jobs if not run.is_done(j)]
    if rc == 0 and left and not_done:
        print(f"\n{len(not_done)} jobs are not done: another study run holds them, or jobs they need, and this "
              f"run left them to it. Follow it with `bus-nnunet study status {args.study_file}`; run this command "
              f"again once it ends (exit status {EXIT_LEFT_TO_ANOTHER_RUN}: try again later).")
        return EXIT_LEFT_TO_ANOTHER_RUN
    return rc


def show_status(args) -> int:
    from bus_nnunet.study.run import StudyRun
    return _print_status(StudyRun.load(args.study_file))


def _print_status(run) -> int:
    from bus_nnunet.text_tables import format_table
    from bus_nnunet.study import jobs as J
    layout = run.layout
    states = run.states()
    rows = []
    for j in run.jobs:
        state, _ = states[j.key]
        where = str(j.log) if state in ("failed", "running", "queued", "cancelled") else ""
        if j.stage == "train":
            what, fold = j.trainer, j.fold
        elif j.stage == "external":
            what, fold = f"external {j.trainer} on {layout.dataset_name(j.test_id) or j.test_id}", ""
        else:
            what, fold = j.stage, ""
        rows.append([layout.dataset_name(j.dataset_id) or (j.dataset_id or ""), j.plans, what, fold, state, where])
    print(format_table(["dataset", "plans", "trainer / stage", "fold", "state", "log"], rows))
    values = [s for s, _ in states.values()]
    counts = {s: values.count(s) for s in sorted(set(values))}
    print("\n" + ", ".join(f"{n} {s}" for s, n in counts.items()))
    for j in run.jobs:
        state, why = states[j.key]
        if state == "failed":
            print(f"\n{j.key} failed ({why or 'no exit status'}); last lines of {j.log}:\n{J.log_tail(j, 8)}")
        elif state in EXPLAINED:
            print(f"\n{j.key}: {state}: {why}")
    for line in run.budget_mismatches():
        print(f"budget differs: {line}")
    if (layout.output / "summary.html").is_file():
        print(f"\nsummary: {layout.output / 'summary.html'}")
    return 1 if "failed" in values else 0


def write_summary(args) -> int:
    from bus_nnunet.study.summary import write_report
    from bus_nnunet.study.run import StudyRun
    run = StudyRun.load(args.study_file)
    states = {k: s for k, (s, _) in run.states([j for j in run.jobs if j.stage != "summary"]).items()}
    page = write_report(run.study, run.layout, states)
    print(f"wrote {page} and {page.with_suffix('.md')}")
    return 0
