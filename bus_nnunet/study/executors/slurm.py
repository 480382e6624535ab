"""``kind = "slurm"``: the whole study submitted once to SLURM through submitit.

Training runs (and the trainers' external predictions) are job arrays, ``array_parallelism`` at a
time; every stage waits for the one it needs (``--dependency=afterok:...``); each job is a
:class:`StudyJobFunction` that submitit requeues on a SLURM time limit (the rerun resumes with
``--c``).  ``submitit-local`` and ``submitit-debug`` run the same submission on submitit's local and
debug clusters, where no dependency can hold a job back: each stage waits for the jobs it needs.

A job that SLURM left waiting for a dependency that can never be met (a job it needs was
cancelled or failed) is cancelled and submitted again with the rest; jobs still queued or running
from an earlier submission are not submitted twice, and new jobs wait for them by their ids.
"""
from __future__ import annotations

import subprocess
from typing import Callable, Dict, List, Optional, Union

from pydantic import BaseModel, ConfigDict, Field

from bus_nnunet.study import jobs as J
from bus_nnunet.study.executors import register_executor
from bus_nnunet.study.executors.local import indent
from bus_nnunet.study.slurm_state import slurm_states


class SlurmOptions(BaseModel):
    """``[executor.slurm]``: sbatch options of the GPU (training) and CPU (convert, plan, report) jobs."""
    model_config = ConfigDict(extra="forbid", frozen=True)
    partition: Optional[str] = None
    account: Optional[str] = None
    qos: Optional[str] = None
    timeout_min: int = Field(24 * 60, ge=1)
    gpus_per_node: int = Field(1, ge=0)
    cpus_per_task: int = Field(8, ge=1)
    mem_gb: int = Field(64, ge=1)
    array_parallelism: int = Field(64, ge=1)
    #: other sbatch options, e.g. {constraint = "a100"}
    additional: Dict[str, Union[str, int]] = {}
    #: CPU-only stages (convert, plan, report) get these instead of the GPU ones
    cpu_partition: Optional[str] = None
    cpu_timeout_min: int = Field(4 * 60, ge=1)


try:
    from submitit.helpers import Checkpointable as _Checkpointable
except ImportError:  # submitit is needed only when a study is submitted
    _Checkpointable = object


class StudyJobFunction(_Checkpointable):
    """What a SLURM job runs: one study job, built *on the node* from the study file and the disk
    as they are then, so a requeued training run resumes (``--c``).  submitit's ``Checkpointable``
    resubmits the same call when SLURM signals the time limit."""

    def __call__(self, study_file: str, key: str, kind: str = "slurm") -> int:
        from bus_nnunet.study.run import StudyRun
        run = StudyRun.load(study_file, kind)
        job = run.job(key)
        # a local study run (or another submission) running this job: wait for it, then this job
        # finds it done, and the jobs after it start as SLURM's afterok dependency says
        with J.job_lock(job, wait=True, on_wait=lambda holder: print(
                f"{key}: held by another study run ({holder}); waiting for it", flush=True)):
            if run.is_done(job):
                return 0
            job = run.job(key)  # the state under the lock: the command it asks for now
            rc = J.run_job(job)
        if rc != 0:
            raise RuntimeError(f"{key} failed with exit status {rc}; log {job.log}:\n{J.log_tail(job)}")
        return rc


def slurm_parameters(options: SlurmOptions, gpu: bool) -> Dict[str, object]:
    """submitit parameters of a GPU (training) or CPU (convert, plan, report) job."""
    s = options
    params: Dict[str, object] = {
        "timeout_min": s.timeout_min if gpu else s.cpu_timeout_min,
        "cpus_per_task": s.cpus_per_task, "mem_gb": s.mem_gb,
        "gpus_per_node": s.gpus_per_node if gpu else 0,
        "slurm_array_parallelism": s.array_parallelism,
    }
    partition = s.partition if gpu else (s.cpu_partition or s.partition)
    for key, value in (("slurm_partition", partition), ("slurm_account", s.account), ("slurm_qos", s.qos)):
        if value:
            params[key] = value
    return params


def submit(run, jobs: List[J.Job], cluster: str = "slurm", log: Callable[[str], None] = print) -> Dict[str, str]:
    """Submit every job that is not done, queued or running; returns ``key -> job id``.  On
    submitit's local/debug clusters the call ends when the study does."""
    import submitit
    study = run.study
    options: SlurmOptions = study.executor.slurm
    executor = submitit.AutoExecutor(folder=run.layout.output / "slurm" / "%j", cluster=cluster)
    on_slurm = executor.cluster == "slurm"
    function = StudyJobFunction()
    handles: Dict[str, object] = {}
    failed: set = set()
    states = {k: s for k, (s, _) in run.states(jobs).items()}
    # jobs SLURM holds for a dependency that can never be met: cancelled here, submitted again below
    blocked = [J.submitted_id(j) for j in jobs if states[j.key] == "blocked" and J.submitted_id(j)]
    never = [i for i, (state, _) in slurm_states(blocked).items() if state == "PENDING"] if on_slurm else []
    if never:
        subprocess.run(["scancel", *never], capture_output=True, timeout=60)
        log(f"cancelled {len(never)} SLURM job(s) left waiting for a job that did not finish: {', '.join(never)}")
    # jobs of an earlier submission still in SLURM's queue: new jobs wait for them by their ids
    earlier = {j.key: J.submitted_id(j) for j in jobs if states[j.key] in ("queued", "running") and J.submitted_id(j)}
    for stage in J.STAGES:
        todo = [j for j in jobs if j.stage == stage and states[j.key] not in ("done", "running", "queued")]
        if not todo:
            continue
        groups = [[j] for j in todo]
        if stage in J.GPU_STAGES:  # one job array of the stage's jobs that need none of it, the rest after it
            keys = {j.key for j in todo}
            array = [j for j in todo if not keys & set(j.after)]
            groups = [array] + [[j] for j in todo if j not in array]
        for group in groups:
            needed = sorted({a for j in group for a in j.after if a in handles})
            waiting_ids = [str(handles[a].job_id) for a in needed] + \
                sorted({earlier[a] for j in group for a in j.after if a in earlier})
            if any(a in failed for j in group for a in j.after):
                for j in group:
                    failed.add(j.key)
                    log(f"{j.key}: not submitted, a job it needs failed")
                continue
            params = slurm_parameters(options, J.needs_gpu(group[0]))
            params["name"] = f"{study.name or 'study'}-{stage}"
            if on_slurm and waiting_ids:
                params["slurm_additional_parameters"] = {
                    **options.additional, "dependency": "afterok:" + ":".join(waiting_ids)}
            elif on_slurm and options.additional:
                params["slurm_additional_parameters"] = dict(options.additional)
            elif not on_slurm:  # local/debug clusters cannot hold a job back: wait for what it needs
                for a in needed:
                    try:
                        handles[a].result()
                    except Exception as e:  # noqa: BLE001 - the failed job's error is its log
                        failed.add(a)
                        log(f"{a}: FAILED\n{indent(str(e))}")
                if any(a in failed for a in needed):
                    for j in group:
                        failed.add(j.key)
                        log(f"{j.key}: skipped, a job it needs failed")
                    continue
            executor.update_parameters(**params)
            if len(group) > 1:
                with executor.batch():
                    submitted = [executor.submit(function, str(study.file), j.key, run.kind) for j in group]
            else:
                submitted = [executor.submit(function, str(study.file), group[0].key, run.kind)]
            for j, handle in zip(group, submitted):
                handles[j.key] = handle
                if on_slurm:  # what status asks SLURM about (a local cluster's ids are process ids)
                    j.log.parent.mkdir(parents=True, exist_ok=True)
                    j.slurm_file.write_text(f"{handle.job_id} {handle.paths.stdout}\n")
            after = needed + sorted({a for j in group for a in j.after if a in earlier})
            log(f"submitted {stage}: {', '.join(f'{j.key}={h.job_id}' for j, h in zip(group, submitted))}"
                + (f" (after {', '.join(after)})" if after else ""))
    if not on_slurm:  # local/debug: the call ends when the study does, as the local executor's does
        for key, handle in handles.items():
            try:
                handle.result()
            except Exception as e:  # noqa: BLE001
                if key not in failed:
                    failed.add(key)
                    log(f"{key}: FAILED\n{indent(str(e))}")
    return {k: str(h.job_id) for k, h in handles.items()}


def _uses_gpu(study) -> bool:
    return study.executor.slurm.gpus_per_node > 0


class _Submitit:
    """The study submitted to one of submitit's clusters; returns ``key -> state`` (``submitted``
    on SLURM, where the call ends once SLURM has the jobs)."""
    cluster = "slurm"

    def __init__(self, log: Callable[[str], None] = print):
        self.log = log

    def __call__(self, run, jobs: List[J.Job]) -> Dict[str, str]:
        ids = submit(run, jobs, self.cluster, self.log)
        if self.cluster == "slurm":
            states = {k: s for k, (s, _) in run.states(jobs).items() if k not in ids}
            return {**states, **{k: "submitted" for k in ids}}
        return {k: s for k, (s, _) in run.states(jobs).items()}


@register_executor("slurm", options=SlurmOptions, uses_gpu=_uses_gpu)
class SlurmExecutor(_Submitit):
    cluster = "slurm"


@register_executor("submitit-local", options=SlurmOptions, table="slurm", uses_gpu=_uses_gpu)
class SubmititLocalExecutor(_Submitit):
    """submitit's local cluster: the same submission, run on this machine (no dependencies)."""
    cluster = "local"


@register_executor("submitit-debug", options=SlurmOptions, table="slurm", uses_gpu=_uses_gpu)
class SubmititDebugExecutor(_Submitit):
    """submitit's debug cluster: the same submission, run in this process, one job after another."""
    cluster = "debug"
