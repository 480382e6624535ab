"""``kind = "local"``: a study's jobs on this machine.

The stages in order; CPU-only stages one job at a time; training runs one at a time on the CPU, or
N at once with N visible GPUs (one per GPU, ``CUDA_VISIBLE_DEVICES``) through a
``concurrent.futures`` pool, the rest queued.  Jobs whose outputs are on disk are never run again;
a failed job is reported with its log tail and its dependants are skipped, while every other job
goes on.  One process at a time runs a job: each holds the job's lock (:func:`..jobs.job_lock`)
while it runs and reads the job's state again under it, so two ``study run`` of one study (or a run
and a SLURM job) never train a fold twice; a second run skips what another holds, and says so.
"""
from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from queue import Queue
from typing import Callable, Dict, List, Optional, Tuple

from bus_nnunet.study import jobs as J
from bus_nnunet.study.executors import register_executor


def visible_gpus(setting) -> List[str]:
    """GPU ids for the local executor: every visible one for "auto", else the first N."""
    if setting == 0:
        return []
    import torch
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [g.strip() for g in visible.split(",") if g.strip()][:n] if visible else [str(i) for i in range(n)]
    return ids if setting == "auto" else ids[:int(setting)]


def attempt(run, job: J.Job, extra_env: Optional[Dict[str, str]] = None) -> Tuple[str, object]:
    """Run the job if no other process does and it is still to do, holding its lock throughout.

    Returns ``("held", holder)`` when another study run holds it, ``("done", None)`` when another
    run finished it since the stage began (re-checked under the lock, so a fold is never
    trained, or its validation rerun with ``--val``, twice), ``("running", None)`` when its command
    still runs from a study run that is gone, else ``("ran", (exit status, seconds))``."""
    try:
        with J.job_lock(job):
            state, _ = run.state(job, slurm={})
            if state in ("done", "running"):
                return state, None
            started = time.time()
            # built again under the lock: the command and the record of inputs as the disk is now
            rc = J.run_job(run.job(job.key), extra_env)
            return "ran", (rc, time.time() - started)
    except J.JobHeld as held:
        return "held", held.holder


@register_executor("local", uses_gpu=lambda study: bool(visible_gpus(study.executor.gpus)))
class LocalExecutor:
    """Every job that is not done, here; returns ``key -> done / failed / blocked / running``
    (``running``: another study run holds it; this run left it, and what needs it, alone)."""

    def __init__(self, log: Callable[[str], None] = print):
        self.log = log

    def __call__(self, run, jobs: List[J.Job]) -> Dict[str, str]:
        log = self.log
        gpus = visible_gpus(run.study.executor.gpus)
        by_key = {j.key: j for j in jobs}
        states: Dict[str, str] = {}
        total = sum(not run.is_done(j) for j in jobs)
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
            states[job.key] = "done" if rc == 0 and run.is_done(job) else "failed"
            finished.append(job.key)
            n = f"{len(finished)}/{max(total, len(finished))}"
            if states[job.key] == "done":
                log(f"[{n}] {job.key}: done in {seconds / 60:.1f} min")
            else:
                why = f"exit status {rc}" if rc else "exited 0 but its outputs are missing"
                log(f"[{n}] {job.key}: FAILED ({why}); log {job.log}\n" + indent(J.log_tail(job)))

        def unblocked(job: J.Job) -> bool:
            for key in job.after:  # another study run may have finished what this one left to it
                if states.get(key) in ("running", "blocked") and run.is_done(by_key[key]):
                    states[key] = "done"
            return _unblocked(job, states, log)

        for stage in J.STAGES:
            # the state is read again under each job's lock when it starts (see attempt)
            runnable = []
            for job in (j for j in jobs if j.stage == stage):
                if run.is_done(job):
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
                        return job, *attempt(run, job, {"CUDA_VISIBLE_DEVICES": gpu})
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
                extra = {"CUDA_VISIBLE_DEVICES": gpus[0]} if gpus and stage == "train" else {}
                record(job, *attempt(run, job, extra))
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


def indent(text: str) -> str:
    return "\n".join("    " + line for line in text.splitlines())
