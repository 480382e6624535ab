"""SLURM's word on a study's submitted jobs, in one call.

``squeue --states=all`` lists the jobs SLURM still remembers (queued, running, and finished ones
for ``MinJobAge``, 300 s by default), with their state and reason.  Jobs it has forgotten are
looked up in the job-completion log when the cluster keeps one (``JobCompType=jobcomp/filetxt``
and ``JobCompLoc`` in the ``slurm.conf`` at ``$SLURM_CONF``: a file read, no accounting database).
No SLURM here: nothing is known, and the study's own files (exit status, outputs) decide.
"""
from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Dict, Iterable, Optional, Tuple

#: SLURM job states (squeue %T) of a job that is still to end
RUNNING_STATES = {"RUNNING", "COMPLETING", "CONFIGURING", "SIGNALING", "STAGE_OUT", "SUSPENDED", "RESIZING"}
LIVE_STATES = RUNNING_STATES | {"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD",
                                "SPECIAL_EXIT", "STOPPED"}
#: ended without the job's own exit status telling it (a node lost, the time limit, memory)
FAILED_STATES = {"NODE_FAIL", "BOOT_FAIL", "TIMEOUT", "OUT_OF_MEMORY", "DEADLINE", "PREEMPTED", "FAILED"}


class SlurmStates(dict):
    """``job id -> (state, reason)``; :attr:`answered`: SLURM was asked and answered, so a job id
    it does not know has left its queue (without running, if the job wrote no exit status)."""
    answered = False


def slurm_states(ids: Iterable[Optional[str]]) -> SlurmStates:
    """``job id -> (state, reason)`` of the given SLURM job ids (array tasks as ``123_4``), from one
    ``squeue`` call; the completion log fills in the ones SLURM forgot."""
    found = SlurmStates()
    wanted = sorted({i for i in ids if i})
    if not wanted:
        return found
    try:
        out = subprocess.run(["squeue", "-h", "-r", "--states=all", "-j", ",".join(wanted), "-o", "%i|%T|%r"],
                             capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return found  # no SLURM on this machine
    # squeue refuses a list of only unknown ids ("Invalid job id specified"): an answer all the same
    found.answered = out.returncode == 0 or "Invalid job id" in out.stderr
    for line in out.stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) == 3 and parts[0] in wanted:
            found[parts[0]] = (parts[1], parts[2])
    missing = set(wanted) - set(found)
    if missing and found.answered:
        for job_id, state in completion_log_states(missing).items():
            found[job_id] = (state, "")
    return found


def completion_log() -> Optional[Path]:
    """``JobCompLoc`` of a ``jobcomp/filetxt`` completion log, from the cluster's slurm.conf."""
    conf = Path(os.environ.get("SLURM_CONF", "/etc/slurm/slurm.conf"))
    try:
        text = conf.read_text(errors="replace")
    except OSError:
        return None
    settings = dict(re.findall(r"^\s*(\w+)\s*=\s*(\S+)", text, re.M))
    if settings.get("JobCompType", "").lower() != "jobcomp/filetxt" or not settings.get("JobCompLoc"):
        return None
    return Path(settings["JobCompLoc"])


def completion_log_states(ids) -> Dict[str, str]:
    """``job id -> JobState`` of the given ids in the completion log (the last line of a requeued job)."""
    log = completion_log()
    if log is None or not ids:
        return {}
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return {}
    out: Dict[str, str] = {}
    for line in lines:
        fields = dict(re.findall(r"(\w+)=(\S*)", line))
        state = fields.get("JobState")
        if not state:
            continue
        names = {fields.get("JobId", "")}
        if fields.get("ArrayJobId") and fields.get("ArrayTaskId") not in (None, "", "4294967294"):
            names.add(f"{fields['ArrayJobId']}_{fields['ArrayTaskId']}")
        for name in names & set(ids):
            out[name] = state.split()[0]
    return out
