"""``bus-nnunet study run|status|report STUDY.toml``: a cross-validation study -- datasets x plans x
trainers x folds -- through nnU-Net's own commands (convert, ``nnUNetv2_plan_and_preprocess``,
``nnUNetv2_train``, ``nnUNetv2_find_best_configuration``, ``bus-nnunet cv-report``), on this
machine or on SLURM (submitit), resumable: finished folds are never trained again.

See the README's "Studies" section and ``examples/study_breast.toml``."""
from __future__ import annotations

import argparse

#: ``study run``'s exit status when it ends with jobs left to another study run (sysexits.h's
#: EX_TEMPFAIL: nothing failed, try again later); 0 means every job is done, 1 that some failed
EXIT_LEFT_TO_ANOTHER_RUN = 75


def register(subparsers) -> None:
    p = subparsers.add_parser("study", help="run a cross-validation study (local GPUs or SLURM), resumable",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="study_command", metavar="ACTION", required=True)
    run = sub.add_parser("run", help="run (or continue) every job that is not done")
    run.add_argument("study_file")
    run.add_argument("--cluster", default=None, choices=("slurm", "local", "debug"),
                     help="with executor kind 'slurm': submitit's cluster (default: slurm; 'local'/'debug' run the "
                          "same submission on this machine)")
    run.set_defaults(func=run_study)
    status = sub.add_parser("status", help="dataset x plans x trainer x fold: done / running / failed / pending")
    status.add_argument("study_file")
    status.set_defaults(func=show_status)
    report = sub.add_parser("report", help="write summary.md and summary.html from what is finished")
    report.add_argument("study_file")
    report.set_defaults(func=write_summary)


def _load(path):
    from bus_nnunet.study import jobs as J
    from bus_nnunet.study.config import load_study
    study = load_study(path)
    layout = J.Layout(study)
    return study, layout, J.build_jobs(study, layout)


def run_study(args) -> int:
    from bus_nnunet.errors import UserError
    from bus_nnunet.study import executors as E
    from bus_nnunet.study import jobs as J
    from bus_nnunet.study.checks import require_valid
    study, layout, jobs = _load(args.study_file)
    require_valid(study, layout)  # every problem of the file at once, before anything is written
    mixed = J.budget_mismatches(study, layout)
    if mixed:
        raise UserError("the study's schedule differs from what these folds were trained with; a study does not "
                        "mix budgets. Restore the [schedule] or delete those fold folders:\n  " + "\n  ".join(mixed))
    layout.output.mkdir(parents=True, exist_ok=True)
    if study.executor.kind == "slurm":
        E.submit_slurm(study, layout, jobs, study.file, cluster=args.cluster)
        if args.cluster in ("local", "debug"):  # it ran here, to the end: report as the local executor does
            return _print_status(study, layout, jobs)
        print(f"follow it with: bus-nnunet study status {args.study_file}")
        return 0
    outcome = E.run_local(study, layout, jobs)
    rc = _print_status(study, layout, jobs)
    if "failed" in outcome.values():
        return 1
    left = [k for k, state in outcome.items() if state in ("running", "blocked")]
    not_done = [j.key for j in jobs if not J.is_done(j, study, layout)]
    if rc == 0 and left and not_done:
        print(f"\n{len(not_done)} jobs are not done: another study run holds them, or jobs they need, and this "
              f"run left them to it. Follow it with `bus-nnunet study status {args.study_file}`; run this command "
              f"again once it ends (exit status {EXIT_LEFT_TO_ANOTHER_RUN}: try again later).")
        return EXIT_LEFT_TO_ANOTHER_RUN
    return rc


def show_status(args) -> int:
    study, layout, jobs = _load(args.study_file)
    return _print_status(study, layout, jobs)


def _print_status(study, layout, jobs) -> int:
    from bus_nnunet.reports import format_table
    from bus_nnunet.study import jobs as J
    states = J.job_states(jobs, study, layout)
    rows = []
    for j in jobs:
        where = str(j.log) if states[j.key] in ("failed", "running", "queued") else ""
        if j.stage == "train":
            rows.append([layout.dataset_name(j.dataset_id) or j.dataset_id, j.plans, j.trainer, j.fold,
                         states[j.key], where])
        elif j.stage == "external":
            rows.append([layout.dataset_name(j.dataset_id) or j.dataset_id, j.plans,
                         f"external {j.trainer} on {layout.dataset_name(j.test_id) or j.test_id}", "", states[j.key],
                         where])
        else:
            rows.append([layout.dataset_name(j.dataset_id) or (j.dataset_id or ""), j.plans, j.stage, "",
                         states[j.key], where])
    print(format_table(["dataset", "plans", "trainer / stage", "fold", "state", "log"], rows))
    counts = {s: list(states.values()).count(s) for s in sorted(set(states.values()))}
    print("\n" + ", ".join(f"{n} {s}" for s, n in counts.items()))
    for j in jobs:
        if states[j.key] == "failed":
            print(f"\n{j.key} failed; last lines of {j.log}:\n{J.log_tail(j, 8)}")
    for line in J.budget_mismatches(study, layout):
        print(f"budget differs: {line}")
    if (layout.output / "summary.html").is_file():
        print(f"\nsummary: {layout.output / 'summary.html'}")
    return 1 if "failed" in states.values() else 0


def write_summary(args) -> int:
    from bus_nnunet.study import jobs as J
    from bus_nnunet.study.report import write_report
    study, layout, jobs = _load(args.study_file)
    states = J.job_states([j for j in jobs if j.stage != "summary"], study, layout)
    page = write_report(study, layout, states)
    print(f"wrote {page} and {page.with_suffix('.md')}")
    return 0
