"""Running a study's jobs: on this machine, or on SLURM through submitit.

* :func:`run_local` -- the stages in order; CPU-only stages one job at a time; training runs one
  at a time on the CPU, or N at once with N visible GPUs (one per GPU, ``CUDA_VISIBLE_DEVICES``)
  through a ``concurrent.futures`` pool, the rest queued.
* :func:`submit_slurm` -- the whole study submitted once through submitit: training runs as job
  arrays, every stage after the one it needs (``--dependency=afterok:...``), each job a
  :class:`StudyJobFunction` that submitit requeues on a SLURM timeout (the rerun resumes with
  ``--c``).  With submitit's ``local`` / ``debug`` clusters (no dependencies there) each stage
  waits for the jobs it needs: the same submission code, testable without SLURM.

Jobs whose outputs are already on disk are never run again; a failed job is reported with its
log tail and its dependants are skipped, while every other job goes on.  One process at a time
runs a job: each holds the job's lock (:func:`.jobs.job_lock`) while it runs and reads the job's
state again under it, so two ``study run`` of one study (or a run and a SLURM job) never train a
fold twice; a second run skips what another holds, and says so.
"""
from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from queue import Queue
from typing import Callable, Dict, List, Optional, Tuple

from bus_nnunet.study import jobs as J
from bus_nnunet.study.config import Study, load_study


def visible_gpus(setting) -> List[str]:
    """GPU ids for the local executor: every visible one for "auto", else the first N."""
    if setting == 0:
        return []
    import torch
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [g.strip() for g in visible.split(",") if g.strip()][:n] if visible else [str(i) for i in range(n)]
    return ids if setting == "auto" else ids[:int(setting)]


def prepare(job: J.Job, study: Study, layout: J.Layout, device: str) -> J.Job:
    """The job with its command as the current state on disk asks (training: fresh / --c / --val)."""
    if job.stage == "train":
        job.cmd = J.train_command(study, layout, job, device)
    if job.stage == "external":
        from bus_nnunet.study import external_validation as EV
        job.cmd = [*EV.command(study.file, job.dataset_id, job.test_id, job.plans, job.trainer), "--device", device]
    return job


def attempt(job: J.Job, study: Study, layout: J.Layout, device: str,
            extra_env: Optional[Dict[str, str]] = None) -> Tuple[str, object]:
    """Run the job if no other process does and it is still to do, holding its lock throughout.

    Returns ``("held", holder)`` when another study run holds it, ``("done", None)`` when another
    run finished it since the stage began (re-checked under the lock, so a fold is never
    trained, or its validation rerun with ``--val``, twice), ``("running", None)`` when its command
    still runs from a study run that is gone, else ``("ran", (exit status, seconds))``."""
    try:
        with J.job_lock(job):
            state = J.job_state(job, study, layout, queue={})
            if state in ("done", "running"):
                return state, None
            started = time.time()
            rc = J.run_job(prepare(job, study, layout, device), extra_env)
            return "ran", (rc, time.time() - started)
    except J.JobHeld as held:
        return "held", held.holder


def run_local(study: Study, layout: J.Layout, jobs: List[J.Job], log: Callable[[str], None] = print) -> Dict[str, str]:
    """Run every job that is not done; returns ``key -> done / failed / blocked / running``
    (``running``: another study run holds it; this run left it, and what needs it, alone)."""
    gpus = visible_gpus(study.executor.gpus)
    by_key = {j.key: j for j in jobs}
    states: Dict[str, str] = {}
    total = sum(not J.is_done(j, study, layout) for j in jobs)
    finished = []
    log(f"study: {len(jobs)} jobs, {total} to run; training on "
        f"{', '.join(f'GPU {g}' for g in gpus) if gpus else 'the CPU, one run at a time'}")

    def record(job: J.Job, outcome: str, detail) -> None:
        if outcome == "held":
            states[job.key] = "running"
            log(f"{job.key}: held by another study run ({detail}); skipped")
            return
        if outcome == "done":
            states[job.key] = "done"
            log(f"{job.key}: finished by another study run meanwhile; not run again")
            return
        if outcome == "running":
            states[job.key] = "running"
            log(f"{job.key}: already running elsewhere (pid file {job.pid_file}); left alone")
            return
        rc, seconds = detail
        states[job.key] = "done" if rc == 0 and J.is_done(job, study, layout) else "failed"
        finished.append(job.key)
        n = f"{len(finished)}/{max(total, len(finished))}"
        if states[job.key] == "done":
            log(f"[{n}] {job.key}: done in {seconds / 60:.1f} min")
        else:
            why = f"exit status {rc}" if rc else "exited 0 but its outputs are missing"
            log(f"[{n}] {job.key}: FAILED ({why}); log {job.log}\n" + _indent(J.log_tail(job)))

    def unblocked(job: J.Job) -> bool:
        for key in job.after:  # another study run may have finished what this one left to it
            if states.get(key) in ("running", "blocked") and J.is_done(by_key[key], study, layout):
                states[key] = "done"
        return _unblocked(job, states, log)

    for stage in J.STAGES:
        # the state is read again under each job's lock when it starts (see attempt)
        runnable = []
        for job in (j for j in jobs if j.stage == stage):
            if J.is_done(job, study, layout):
                states[job.key] = "done"
            else:
                runnable.append(job)
        if stage == "train" and len(gpus) > 1:
            free: Queue = Queue()
            for g in gpus:
                free.put(g)

            def on_gpu(job):
                gpu = free.get()
                try:
                    return job, *attempt(job, study, layout, "cuda", {"CUDA_VISIBLE_DEVICES": gpu})
                finally:
                    free.put(gpu)

            ready = [j for j in runnable if unblocked(j)]
            with ThreadPoolExecutor(max_workers=len(gpus)) as pool:
                for future in as_completed([pool.submit(on_gpu, j) for j in ready]):
                    record(*future.result())
            continue
        for job in runnable:
            if not unblocked(job):
                continue
            device = "cuda" if gpus else "cpu"
            extra = {"CUDA_VISIBLE_DEVICES": gpus[0]} if gpus and stage == "train" else {}
            record(job, *attempt(job, study, layout, device, extra))
    return states


def _unblocked(job: J.Job, states: Dict[str, str], log) -> bool:
    waiting = [a for a in job.after if states.get(a) != "done"]
    if waiting:
        states[job.key] = "blocked"
        log(f"{job.key}: skipped, it needs {', '.join(waiting)} "
            f"({', '.join(_said(states.get(a, '?')) for a in waiting)})")
    return not waiting


def _said(state: str) -> str:
    return "running elsewhere" if state == "running" else state


def _indent(text: str) -> str:
    return "\n".join("    " + line for line in text.splitlines())


# -- SLURM through submitit ------------------------------------------------------------------------
try:
    from submitit.helpers import Checkpointable as _Checkpointable
except ImportError:  # submitit is needed only for the slurm executor
    _Checkpointable = object


class StudyJobFunction(_Checkpointable):
    """What a SLURM job runs: one study job, looked up by key in the study file *on the node*, so
    a requeued training run starts from what is on disk then (``--c``).  submitit's
    ``Checkpointable`` resubmits the same call when SLURM signals the time limit."""

    def __call__(self, study_file: str, key: str, device: str) -> int:
        study = load_study(study_file)
        layout = J.Layout(study)
        job = next(j for j in J.build_jobs(study, layout) if j.key == key)
        # a local study run (or another submission) running this job: wait for it, then this job
        # finds it done, and the jobs after it start as SLURM's afterok dependency says
        with J.job_lock(job, wait=True, on_wait=lambda holder: print(
                f"{key}: held by another study run ({holder}); waiting for it", flush=True)):
            if J.is_done(job, study, layout):
                return 0
            rc = J.run_job(prepare(job, study, layout, device))
        if rc != 0:
            raise RuntimeError(f"{key} failed with exit status {rc}; log {job.log}:\n{J.log_tail(job)}")
        return rc


def slurm_parameters(study: Study, gpu: bool) -> Dict[str, object]:
    """submitit parameters of a GPU (training) or CPU (convert, plan, report) job."""
    s = study.executor.slurm
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


def submit_slurm(study: Study, layout: J.Layout, jobs: List[J.Job], study_file: Path, cluster: Optional[str] = None,
                 log: Callable[[str], None] = print) -> Dict[str, str]:
    """Submit every job that is not done, queued or running; returns ``key -> job id``."""
    import submitit
    executor = submitit.AutoExecutor(folder=layout.output / "slurm" / "%j", cluster=cluster)
    on_slurm = executor.cluster == "slurm"
    function = StudyJobFunction()
    gpu_device = "cuda" if study.executor.slurm.gpus_per_node else "cpu"
    handles: Dict[str, object] = {}
    failed: set = set()
    states = J.job_states(jobs, study, layout)
    # jobs of an earlier submission still in SLURM's queue: new jobs wait for them by their ids
    earlier = {j.key: j.slurm_file.read_text().split()[0] for j in jobs
               if states[j.key] in ("queued", "running") and j.slurm_file.is_file()}
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
            params = slurm_parameters(study, J.needs_gpu(group[0]))
            params["name"] = f"{study.name or 'study'}-{stage}"
            if on_slurm and waiting_ids:
                params["slurm_additional_parameters"] = {
                    **study.executor.slurm.additional, "dependency": "afterok:" + ":".join(waiting_ids)}
            elif on_slurm and study.executor.slurm.additional:
                params["slurm_additional_parameters"] = dict(study.executor.slurm.additional)
            elif not on_slurm:  # local/debug clusters cannot hold a job back: wait for what it needs
                for a in needed:
                    try:
                        handles[a].result()
                    except Exception as e:  # noqa: BLE001 - the failed job's error is its log
                        failed.add(a)
                        log(f"{a}: FAILED\n{_indent(str(e))}")
                if any(a in failed for a in needed):
                    for j in group:
                        failed.add(j.key)
                        log(f"{j.key}: skipped, a job it needs failed")
                    continue
            executor.update_parameters(**params)
            device = gpu_device if J.needs_gpu(group[0]) else "cpu"
            if len(group) > 1:
                with executor.batch():
                    submitted = [executor.submit(function, str(study_file), j.key, device) for j in group]
            else:
                submitted = [executor.submit(function, str(study_file), group[0].key, device)]
            for j, handle in zip(group, submitted):
                handles[j.key] = handle
                j.log.parent.mkdir(parents=True, exist_ok=True)
                j.slurm_file.write_text(f"{handle.job_id} {handle.paths.stdout}\n")
            log(f"submitted {stage}: {', '.join(f'{j.key}={h.job_id}' for j, h in zip(group, submitted))}"
                + (f" (after {', '.join(needed)})" if needed else ""))
    if not on_slurm:  # local/debug: the call ends when the study does, as the local executor's does
        for key, handle in handles.items():
            try:
                handle.result()
            except Exception as e:  # noqa: BLE001
                if key not in failed:
                    failed.add(key)
                    log(f"{key}: FAILED\n{_indent(str(e))}")
    return {k: str(h.job_id) for k, h in handles.items()}
