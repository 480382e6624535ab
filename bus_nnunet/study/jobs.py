"""The stages of a study as jobs, and each job's state read from nnU-Net's outputs on disk.

A job is one command line of nnU-Net or bus-nnunet (``nnUNetv2_train 501 2d 3 -tr X -p P``); the
unit of scheduling is one training run.  State is what nnU-Net left on disk, never a private
database: ``checkpoint_final.pth`` plus ``validation/summary.json`` is a finished fold,
``checkpoint_final.pth`` alone a fold whose final validation was cut off (rerun with ``--val``),
``checkpoint_latest.pth`` a fold to resume with ``--c``.  Beside that, each job's log and exit
status live in ``<output>/logs`` so a failure can be shown with its log tail, with the record of
the folds a job that uses trained models was computed from (:mod:`.inputs`: a fold retrained
since makes it stale) and the SLURM job id of its last submission (SLURM's state: cancelled,
failed on a node, queued again).
"""
from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

from bus_nnunet.errors import UserError
from bus_nnunet.tool_runner import tool  # console scripts of the venv that runs the study
from bus_nnunet.study import external_validation as EV
from bus_nnunet.study.config import PLANNERS, Study
from bus_nnunet.study.inputs import Record, checkpoint_record, read_record, stale_reason, write_record
from bus_nnunet.study.slurm_state import FAILED_STATES, LIVE_STATES, RUNNING_STATES, slurm_states
# the trainer attributes a [schedule] sets -> the variables bus-nnunet trainers (and the study's
# launcher, for nnU-Net's own trainers) read them from
from bus_nnunet.schedule import SCHEDULE_ENV

STAGES = ("convert", "plan", "train", "ensemble", "report", "external", "summary")
#: stages whose jobs run a network (external: the trainers' predictions; its ensembles only average)
GPU_STAGES = ("train", "external")


@dataclass
class Job:
    key: str
    stage: str
    cmd: List[str]
    env: Dict[str, str]
    log: Path
    after: List[str] = field(default_factory=list)
    dataset_id: int = 0
    plans: str = ""
    trainer: str = ""   # external jobs: the trainer, or "ensemble"
    fold: str = ""
    test_id: int = 0    # external jobs: the dataset tested on
    #: the folds a job that uses trained models is computed from (:mod:`.inputs`), as they are now
    inputs: Optional[Record] = None

    @property
    def rc_file(self) -> Path:
        return self.log.with_suffix(".rc")

    @property
    def pid_file(self) -> Path:
        return self.log.with_suffix(".pid")

    @property
    def slurm_file(self) -> Path:
        return self.log.with_suffix(".slurm")

    @property
    def lock_file(self) -> Path:
        return self.log.with_suffix(".lock")

    @property
    def inputs_file(self) -> Path:
        """The record of what the job's outputs were computed from, written when it succeeds."""
        return self.log.with_suffix(".inputs.json")


class JobHeld(Exception):
    """Another process (a second ``study run``, or a SLURM job of the same study) runs this job."""

    def __init__(self, key: str, holder: str):
        super().__init__(f"{key}: held by another study run ({holder})")
        self.key, self.holder = key, holder


@contextlib.contextmanager
def job_lock(job: Job, wait: bool = False, on_wait: Optional[Callable[[str], None]] = None):
    """Hold the job's ``<output>/logs/<key>.lock`` (``fcntl.flock``) for the body of the with-block:
    the one process that holds it may run the job.  Held already: :class:`JobHeld`, or with
    ``wait`` block until it is free (``on_wait`` is told who holds it).  The kernel drops the lock
    when its holder exits, killed or not, so no lock file is ever stale; the files stay (removing
    one would race with a process opening it) and hold the last holder's pid for messages."""
    job.lock_file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(job.lock_file, os.O_RDWR | os.O_CREAT, 0o666)  # not inherited by the job's command
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                raise JobHeld(job.key, _lock_holder(fd)) from None
            if on_wait:
                on_wait(_lock_holder(fd))
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def _lock_holder(fd: int) -> str:
    """``pid N`` (``on HOST`` when not this machine) of the process holding the lock."""
    for _ in range(5):  # the holder writes its pid just after taking the lock
        words = os.pread(fd, 200, 0).decode(errors="replace").split()
        if len(words) == 2:
            pid, host = words
            return f"pid {pid}" + ("" if host == socket.gethostname() else f" on {host}")
        time.sleep(0.05)
    return "pid unknown"


def run_job(job: Job, extra_env: Optional[Dict[str, str]] = None) -> int:
    """Run one job's command with its log and exit status written beside it (local and SLURM
    alike), and, when it succeeds, the record of the folds it was computed from.  Returns the
    exit status."""
    job.log.parent.mkdir(parents=True, exist_ok=True)
    job.rc_file.unlink(missing_ok=True)
    job.inputs_file.unlink(missing_ok=True)  # the outputs are being replaced: no record vouches for them
    env = {k: v for k, v in os.environ.items() if k not in SCHEDULE_ENV.values()}
    env.update(job.env)
    env.update(extra_env or {})
    with open(job.log, "a", encoding="utf-8") as log:
        log.write(f"\n===== {time.strftime('%Y-%m-%d %H:%M:%S')} {socket.gethostname()} "
                  f"{' '.join(job.cmd)}\n")
        log.flush()
        proc = subprocess.Popen(job.cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        job.pid_file.write_text(f"{proc.pid} {socket.gethostname()}\n")
        rc = proc.wait()
    if rc == 0 and job.inputs is not None:
        write_record(job.inputs_file, job.inputs)
    # the SLURM job that ran it, if any: its exit status and SLURM's state then describe one run
    job.rc_file.write_text(f"{rc} {_slurm_job_id()}\n".rstrip(" \n") + "\n")
    job.pid_file.unlink(missing_ok=True)
    return rc


def _slurm_job_id() -> str:
    env = os.environ
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    return env.get("SLURM_JOB_ID", "")


class Layout:
    """Where nnU-Net puts each thing of a study (its three folders and the study's own output)."""

    def __init__(self, study: Study):
        self.study = study
        self.paths = study.nnunet_paths()
        self.raw = Path(self.paths["nnUNet_raw"])
        self.preprocessed = Path(self.paths["nnUNet_preprocessed"])
        self.results = Path(self.paths["nnUNet_results"])
        self.output = study.output_dir
        self.logs = self.output / "logs"

    def dataset_name(self, dataset_id: int) -> Optional[str]:
        """``DatasetNNN_Name`` once it exists in raw or preprocessed (None before conversion)."""
        for root in (self.raw, self.preprocessed):
            found = sorted(root.glob(f"Dataset{dataset_id:03d}_*")) if root.is_dir() else []
            if found:
                return found[0].name
        return None

    def model_folder(self, dataset_id: int, trainer: str, plans: str) -> Optional[Path]:
        name = self.dataset_name(dataset_id)
        return self.results / name / f"{trainer}__{plans}__{self.study.configuration}" if name else None

    def fold_folder(self, dataset_id: int, trainer: str, plans: str, fold) -> Optional[Path]:
        model = self.model_folder(dataset_id, trainer, plans)
        return model / f"fold_{fold}" if model else None

    def cv_report(self, dataset_id: int, plans: str) -> Path:
        return self.output / "cv_report" / f"Dataset{dataset_id:03d}" / plans


# -- the job graph ---------------------------------------------------------------------------------
def build_jobs(run) -> List[Job]:
    """Every job of the :class:`bus_nnunet.study.run.StudyRun`, in stage order, with the keys of
    the jobs it needs, each with its real command as the state on disk asks for now (a training
    run: fresh, ``--c`` or ``--val``) and, for a job that uses trained models, the record of the
    folds it will be computed from (:mod:`.inputs`)."""
    study, layout = run.study, run.layout
    base_env = dict(layout.paths, nnUNet_def_n_proc=str(study.executor.processes))
    base_env.update({SCHEDULE_ENV[k]: str(v) for k, v in study.schedule.overrides().items()})
    cfg = study.configuration
    jobs: List[Job] = []

    workers = study.executor.augmentation_workers
    stage_env = {
        # nnU-Net's planner passes nnUNet_n_proc_DA to torch.set_num_threads, which refuses 0
        "plan": {"nnUNet_n_proc_DA": str(study.executor.processes)},
        "train": {"nnUNet_n_proc_DA": str(workers)} if workers is not None else {},
    }

    def add(key, stage, cmd, after=(), **meta):
        jobs.append(Job(key, stage, [str(c) for c in cmd], {**base_env, **stage_env.get(stage, {})},
                        layout.logs / f"{key}.log", list(after), **meta))
        return jobs[-1]

    numbered = [f for f in study.folds if f != "all"]
    for ds in study.datasets:
        did = ds.id
        convert = []
        if ds.converter:
            add(f"convert-{did}", "convert",
                [tool("bus-nnunet"), "convert", ds.converter, (study.root / ds.source).resolve(), "--id", did,
                 "-o", layout.raw, "--no-progress", *ds.convert_args], dataset_id=did)
            convert = [f"convert-{did}"]
        if not ds.train:  # only tested on (external validation): converted, never planned or trained
            continue
        previous_plan = convert
        for preset in study.plans:
            plans = study.trained_plans(preset)
            # plans of one dataset one after the other: each run re-extracts the same fingerprint
            add(f"plan-{did}-{preset}", "plan",
                [sys.executable, "-m", "bus_nnunet.study.plan_dataset", did, cfg, PLANNERS[preset], preset,
                 study.executor.processes, study.schedule.batch_size or 0],
                previous_plan, dataset_id=did, plans=preset)
            previous_plan = [f"plan-{did}-{preset}"]
            for trainer in study.trainers:
                for fold in study.folds:
                    add(train_key(did, plans, trainer, fold), "train",
                        train_command(run, did, plans, trainer, str(fold)), previous_plan, dataset_id=did,
                        plans=plans, trainer=trainer, fold=str(fold))
        trains = [j.key for j in jobs if j.stage == "train" and j.dataset_id == did]
        trained_plans = [study.trained_plans(p) for p in study.plans]
        add(f"ensemble-{did}", "ensemble",
            [tool("nnUNetv2_find_best_configuration"), did, "-c", cfg, "-tr", *study.trainers, "-p", *trained_plans,
             "-f", *study.folds, "-np", study.executor.processes,
             *([] if "--npz" in study.nnunet_train_flags else ["--disable_ensembling"])],
            trains, dataset_id=did)
        ensembles = ["--ensembles", EV.ensemble_selection(study)] if EV.ensemble_selection(study) else []
        for plans in trained_plans:
            add(f"report-{did}-{plans}", "report",
                [tool("bus-nnunet"), "cv-report", did, "-tr", *study.trainers, "-p", plans, "-c", cfg,
                 "-f", *numbered, "-o", layout.cv_report(did, plans), "--overwrite",
                 "--hd95", study.hd95, *ensembles, "--no-progress"],
                [k for k in trains if f"-{plans}-" in k], dataset_id=did, plans=plans)
    converted = {j.dataset_id: j.key for j in jobs if j.stage == "convert"}
    for train_id, test_id in EV.external_pairs(study):
        for plans in map(study.trained_plans, study.plans):
            predictions = []
            for model in EV.external_models(study):
                if model == EV.ENSEMBLE:  # averages its members' saved probabilities, chosen by the cv-report
                    after = [*predictions, f"report-{train_id}-{plans}"]
                else:
                    after = [train_key(train_id, plans, model, f) for f in EV.prediction_folds(study)]
                    after += [converted[test_id]] if test_id in converted else []
                key = external_key(train_id, test_id, plans, model)
                device = ["--device", run.device] if model != EV.ENSEMBLE else []
                add(key, "external", [*EV.command(study.file, train_id, test_id, plans, model), *device], after,
                    dataset_id=train_id, plans=plans, trainer=model, test_id=test_id)
                predictions.append(key)
    add("summary", "summary", [tool("bus-nnunet"), "study", "report", study.file],
        [j.key for j in jobs if j.stage in ("ensemble", "report", "external")])
    for job in jobs:
        job.inputs = model_inputs(run, job)
    return jobs


def model_inputs(run, job: Job) -> Optional[Record]:
    """The record of the folds ``job`` is computed from, as they are on disk now (None: the job
    uses no trained model; an external test keeps its record in its own metrics.json)."""
    study, layout = run.study, run.layout
    if job.stage == "ensemble":  # nnUNetv2_find_best_configuration: every trainer, plans and fold
        return checkpoint_record(layout, job.dataset_id, map(study.trained_plans, study.plans), study.trainers,
                                 study.folds)
    if job.stage == "report":  # cv-report of one plans over the numbered folds
        return checkpoint_record(layout, job.dataset_id, [job.plans], study.trainers,
                                 [f for f in study.folds if f != "all"])
    if job.stage == "summary":
        return {k: v for did in EV.trained_datasets(study)
                for k, v in checkpoint_record(layout, did, map(study.trained_plans, study.plans), study.trainers,
                                              study.folds).items()}
    return None


def needs_gpu(job: Job) -> bool:
    """Training runs and the trainers' external predictions (an external ensemble only averages)."""
    return job.stage in GPU_STAGES and not (job.stage == "external" and job.trainer == EV.ENSEMBLE)


def external_key(train_id: int, test_id: int, plans: str, model: str) -> str:
    return f"external-{train_id}-{test_id}-{plans}-{model}"


def train_key(dataset_id: int, plans: str, trainer: str, fold) -> str:
    return f"train-{dataset_id}-{plans}-{trainer}-fold{fold}"


def train_command(run, dataset_id: int, plans: str, trainer: str, fold: str) -> List[str]:
    """``nnUNetv2_train`` for this fold as its state asks: fresh, ``--c`` to resume, ``--val`` when
    only the final validation is missing.  With a [schedule], through :mod:`.budget_train` so
    nnU-Net's own trainers run the same budget as ours."""
    study = run.study
    folder = run.layout.fold_folder(dataset_id, trainer, plans, fold)
    state = []
    if folder is not None and (folder / "checkpoint_final.pth").is_file():
        state = ["--val"]
    elif folder is not None and (folder / "checkpoint_latest.pth").is_file():
        state = ["--c"]
    launcher = [sys.executable, "-m", "bus_nnunet.study.budget_train"] if study.schedule.overrides() else \
        [tool("nnUNetv2_train")]
    return [*launcher, str(dataset_id), study.configuration, fold, "-tr", trainer, "-p", plans,
            "-device", run.device, *study.nnunet_train_flags, *state]


# -- outputs on disk -------------------------------------------------------------------------------
#: the word a stale-reason names each job that uses trained models by
_WHAT = {"ensemble": "ensemble", "report": "report", "summary": "summary", "external": "external test"}


def _newest_checkpoint(record: Record) -> float:
    return max((mtime / 1e9 for _, mtime in record.values()), default=0.0)


def _recorded(run, job: Job, marker: Path, name_of=None) -> Tuple[bool, Optional[str]]:
    """(done, stale reason) of a job whose outputs exist (``marker``), from its record of inputs
    against the folds on disk now; outputs without a record (made before records, or by hand)
    count when newer than every fold."""
    recorded, current = read_record(job.inputs_file), model_inputs(run, job) or {}
    if recorded is None:
        return marker.stat().st_mtime >= _newest_checkpoint(current), None
    why = stale_reason(recorded, current, _WHAT[job.stage], name_of)
    return why is None, why


def outputs_state(run, job: Job) -> Tuple[bool, Optional[str]]:
    """(done, stale reason): done is what nnU-Net and the study's commands left on disk, never a
    scheduler's word; stale: the outputs are there, computed from folds that changed since."""
    study, layout = run.study, run.layout
    if job.stage == "convert":
        name = layout.dataset_name(job.dataset_id)
        return bool(name) and (layout.raw / name / "dataset.json").is_file(), None
    if job.stage == "plan":
        name = layout.dataset_name(job.dataset_id)
        derived = study.trained_plans(job.plans)
        return plans_complete(layout, job.dataset_id, job.plans, study.configuration) and \
            (layout.preprocessed / name / f"{derived}.json").is_file(), None
    if job.stage == "train":
        folder = layout.fold_folder(job.dataset_id, job.trainer, job.plans, job.fold)
        return folder is not None and (folder / "checkpoint_final.pth").is_file() and \
            (folder / "validation" / "summary.json").is_file(), None
    if job.stage == "external":
        return EV.outputs_state(run, job.dataset_id, job.test_id, job.plans, job.trainer)
    if job.stage == "summary":
        page = layout.output / "summary.html"
        inputs = [layout.cv_report(d, study.trained_plans(p)) / "metrics.json" for d in EV.trained_datasets(study)
                  for p in study.plans]
        inputs += [EV.pair_folder(layout, train, test, study.trained_plans(p), model) / "metrics.json"
                   for train, test in EV.external_pairs(study) for p in study.plans
                   for model in EV.external_models(study)]
        if not page.is_file() or not all(f.is_file() and f.stat().st_mtime <= page.stat().st_mtime for f in inputs):
            return False, None
        return _recorded(run, job, page, name_of=lambda d: layout.dataset_name(d) or f"Dataset{d:03d}")
    name = layout.dataset_name(job.dataset_id)
    if job.stage == "ensemble":
        marker = layout.results / name / "inference_information.json" if name else None
        if not marker or not marker.is_file():
            return False, None
        trained = [study.trained_plans(p) for p in study.plans]
        try:
            info = json.loads(marker.read_text())
        except ValueError:
            return False, None
        considered = {(m.get("trainer"), m.get("plans")) for m in info.get("considered_models", [])}
        # nnU-Net writes one such file per dataset: it is this study's only for these models and folds
        if considered != {(t, p) for t in study.trainers for p in trained} or \
                [str(f) for f in info.get("folds", [])] != [str(f) for f in study.folds]:
            return False, None
        return _recorded(run, job, marker)
    marker = layout.cv_report(job.dataset_id, job.plans) / "metrics.json"
    return _recorded(run, job, marker) if marker.is_file() else (False, None)


def plans_complete(layout: Layout, dataset_id: int, plans: str, configuration: str) -> bool:
    """The plans file exists and every training case has been preprocessed for ``configuration``."""
    name = layout.dataset_name(dataset_id)
    if not name:
        return False
    plans_file = layout.preprocessed / name / f"{plans}.json"
    dataset_json = layout.raw / name / "dataset.json"
    if not plans_file.is_file() or not dataset_json.is_file():
        return False
    try:
        identifier = json.loads(plans_file.read_text())["configurations"][configuration]["data_identifier"]
        n_training = json.loads(dataset_json.read_text())["numTraining"]
    except (KeyError, ValueError):
        return False
    data = layout.preprocessed / name / identifier
    return data.is_dir() and sum(1 for _ in data.glob("*.pkl")) >= n_training


# -- state -----------------------------------------------------------------------------------------
def _process_alive(pid_file: Path, trust_other_hosts: bool = True) -> bool:
    try:
        pid, host = pid_file.read_text().split()
        if host != socket.gethostname():
            return trust_other_hosts  # another node's job: its pid file, until it writes an exit status
        os.kill(int(pid), 0)
        return True
    except (OSError, ValueError):
        return False


def submitted_id(job: Job) -> Optional[str]:
    """The SLURM job id of the job's last submission (``<output>/logs/<key>.slurm``)."""
    try:
        words = job.slurm_file.read_text().split()
    except OSError:
        return None
    return words[0] if words else None


def exit_status(job: Job) -> Optional[Tuple[int, str]]:
    """(exit status, SLURM job id or "") of the job's last finished command (None: none finished)."""
    try:
        words = job.rc_file.read_text().split()
        return int(words[0]), (words[1] if len(words) > 1 else "")
    except (OSError, ValueError, IndexError):
        return None


def job_state(run, job: Job, slurm: Optional[Dict[str, Tuple[str, str]]] = None) -> Tuple[str, str]:
    """(state, why) of one job: ``done``, ``running``, ``queued``, ``blocked`` (SLURM holds it for a
    dependency that can never be met), ``stale`` (outputs computed from folds that changed since),
    ``cancelled`` (SLURM says so), ``failed``, ``resumable`` or ``pending``.  ``slurm`` is
    :func:`.slurm_state.slurm_states` of the jobs asked about together (asked for this job alone
    if not given).  Done is only ever read from the outputs on disk."""
    done, stale = outputs_state(run, job)
    if done:
        return "done", ""
    job_id = submitted_id(job)
    if slurm is None:
        slurm = slurm_states([job_id]) if job_id else {}
    slurm_state, reason = slurm.get(job_id or "", ("", ""))
    if slurm_state in LIVE_STATES:
        if slurm_state == "PENDING" and reason == "DependencyNeverSatisfied":
            return "blocked", f"SLURM job {job_id} waits for a job that did not finish"
        return ("running" if slurm_state in RUNNING_STATES else "queued"), f"SLURM job {job_id} {slurm_state}"
    # another node's pid file is trusted only while SLURM cannot say the job ended (a failed node
    # leaves its pid file behind)
    ended_on_slurm = bool(job_id) and (bool(slurm_state) or getattr(slurm, "answered", False))
    if job.pid_file.is_file() and _process_alive(job.pid_file, trust_other_hosts=not ended_on_slurm):
        return "running", ""
    if stale:
        return "stale", stale
    finished = exit_status(job)
    # SLURM's word on the last submission, unless a run on this machine has finished the job since
    ran_there = finished is not None and finished[1] == job_id
    from_slurm = bool(job_id) and (finished is None or ran_there or
                                   job.rc_file.stat().st_mtime <= job.slurm_file.stat().st_mtime)
    if from_slurm and slurm_state == "CANCELLED":
        if reason == "DependencyNeverSatisfied":  # SLURM's kill_invalid_depend: the job never ran
            return "blocked", f"SLURM cancelled job {job_id}: a job it needs did not finish"
        return "cancelled", f"SLURM job {job_id} was cancelled"
    if from_slurm and slurm_state in FAILED_STATES:
        return "failed", f"SLURM job {job_id} ended {slurm_state}"
    if from_slurm and not slurm_state and getattr(slurm, "answered", False) and not ran_there:
        # gone from SLURM's queue without running (a pending array task that was scancel'd leaves no record)
        return "cancelled", f"SLURM job {job_id} left the queue without running"
    if finished is not None and finished[0] != 0:
        return "failed", f"exit status {finished[0]}"
    if job.stage == "train":
        folder = run.layout.fold_folder(job.dataset_id, job.trainer, job.plans, job.fold)
        if folder is not None and any((folder / c).is_file() for c in ("checkpoint_latest.pth",
                                                                          "checkpoint_final.pth")):
            return "resumable", ""
    return "pending", ""


def job_states(run, jobs: List[Job]) -> Dict[str, Tuple[str, str]]:
    """:func:`job_state` of every job, with one SLURM call for all of them; a job SLURM cancelled
    before it ran because a job it needs did not finish is ``blocked`` (with that job), not
    ``cancelled`` -- the user cancelled the other one."""
    slurm = slurm_states([submitted_id(j) for j in jobs])
    states = {j.key: job_state(run, j, slurm) for j in jobs}
    for j in jobs:  # in stage order: what a job needs is settled before it
        needs = [a for a in j.after if states.get(a, ("done", ""))[0] in ("cancelled", "failed", "blocked")]
        if states[j.key][0] == "cancelled" and needs and not (exit_status(j) or (0, ""))[1]:
            states[j.key] = ("blocked", f"needs {needs[0]} ({states[needs[0]][0]})")
    return states


def log_tail(job: Job, lines: int = 15) -> str:
    if not job.log.is_file():
        return "(no log)"
    return "\n".join(job.log.read_text(errors="replace").splitlines()[-lines:])


# -- one budget for a study ------------------------------------------------------------------------
def recorded_schedule(fold_folder: Path) -> Optional[Dict[str, int]]:
    """The schedule a fold was trained with, from nnU-Net's own ``debug.json`` in the fold."""
    debug = fold_folder / "debug.json"
    if not debug.is_file():
        return None
    try:  # ValueError also for a debug.json that a run of this fold is writing right now
        values = json.loads(debug.read_text())
        return {k: int(values[k]) for k in SCHEDULE_ENV if k in values}
    except ValueError:
        return None


def trainer_default_schedule(trainer: str, plans_file: Path, dataset_json: Path, configuration: str) -> Dict[str, int]:
    """The schedule ``trainer`` runs without overrides: the trainer is instantiated (on the CPU,
    ``nnUNet_results`` pointed at a temporary folder, since its constructor makes folders and a
    log there) and its attributes read."""
    import tempfile
    import torch
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # nnU-Net prints every module it inspects
            cls = recursive_find_trainer_class_by_name(trainer)
    except RuntimeError:
        raise UserError(f"trainer {trainer} not found by nnU-Net's lookup (bus-nnunet doctor explains why)") from None
    saved_env = {v: os.environ.pop(v) for v in (*SCHEDULE_ENV.values(), "nnUNet_results") if v in os.environ}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            os.environ["nnUNet_results"] = tmp  # nnU-Net reads it when the trainer makes its folders
            plans = {**json.loads(plans_file.read_text()), "continue_training": False}  # as nnU-Net's entry passes
            with contextlib.redirect_stdout(io.StringIO()):
                trainer_obj = cls(plans, configuration, 0, json.loads(dataset_json.read_text()),
                                  device=torch.device("cpu"))
            return {k: int(getattr(trainer_obj, k)) for k in SCHEDULE_ENV}
    finally:
        os.environ.pop("nnUNet_results", None)
        os.environ.update(saved_env)


def budget_mismatches(run) -> List[str]:
    """Folds trained (or started) with another schedule than the study's, one line each."""
    study, layout = run.study, run.layout
    overrides = study.schedule.overrides()
    defaults: Dict[tuple, Dict[str, int]] = {}
    problems = []
    for ds in study.datasets:
        name = layout.dataset_name(ds.id)
        if not name:
            continue
        for preset in study.plans:
            plans = study.trained_plans(preset)
            for trainer in study.trainers:
                for fold in study.folds:
                    folder = layout.fold_folder(ds.id, trainer, plans, fold)
                    recorded = recorded_schedule(folder) if folder else None
                    if not recorded:
                        continue
                    key = (trainer, plans, ds.id)
                    if key not in defaults and set(overrides) == set(SCHEDULE_ENV):
                        defaults[key] = {}  # the study sets every length: no default is needed
                    elif key not in defaults:
                        defaults[key] = trainer_default_schedule(trainer, layout.preprocessed / name / f"{plans}.json",
                                                                 layout.raw / name / "dataset.json",
                                                                 study.configuration)
                    expected = {**defaults[key], **overrides}
                    diff = {k: (recorded[k], expected[k]) for k in expected if k in recorded and recorded[k] != expected[k]}
                    if diff:
                        problems.append(f"{name} {plans} {trainer} fold {fold}: trained with "
                                        + ", ".join(f"{k}={a} (study: {b})" for k, (a, b) in diff.items()))
    return problems
