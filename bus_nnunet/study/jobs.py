"""The stages of a study as jobs, and each job's state read from nnU-Net's outputs on disk.

A job is one command line of nnU-Net or bus-nnunet (``nnUNetv2_train 501 2d 3 -tr X -p P``); the
unit of scheduling is one training run.  State is what nnU-Net left on disk, never a private
database: ``checkpoint_final.pth`` plus ``validation/summary.json`` is a finished fold,
``checkpoint_final.pth`` alone a fold whose final validation was cut off (rerun with ``--val``),
``checkpoint_latest.pth`` a fold to resume with ``--c``.  Beside that, each job's log and exit
status live in ``<output>/logs`` so a failure can be shown with its log tail.
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
from typing import Callable, Dict, List, Optional

from bus_nnunet.errors import UserError
from bus_nnunet.harness import tool  # console scripts of the venv that runs the study
from bus_nnunet.study import external_validation as EV
from bus_nnunet.study.config import PLANNERS, Study
# the trainer attributes a [schedule] sets -> the variables bus-nnunet trainers (and the study's
# launcher, for nnU-Net's own trainers) read them from
from bus_nnunet.trainers.base import SCHEDULE_ENV

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
    alike: submitit pickles this function).  Returns the exit status."""
    job.log.parent.mkdir(parents=True, exist_ok=True)
    job.rc_file.unlink(missing_ok=True)
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
    job.rc_file.write_text(f"{rc}\n")
    job.pid_file.unlink(missing_ok=True)
    return rc


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
def build_jobs(study: Study, layout: Layout) -> List[Job]:
    """Every job of the study, in stage order, with the keys of the jobs it needs."""
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
                    add(train_key(did, plans, trainer, fold), "train", [], previous_plan, dataset_id=did,
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
                 "-f", *[f for f in study.folds if f != "all"], "-o", layout.cv_report(did, plans), "--overwrite",
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
                add(key, "external", EV.command(study.file, train_id, test_id, plans, model), after,
                    dataset_id=train_id, plans=plans, trainer=model, test_id=test_id)
                predictions.append(key)
    add("summary", "summary", [tool("bus-nnunet"), "study", "report", study.file],
        [j.key for j in jobs if j.stage in ("ensemble", "report", "external")])
    return jobs


def needs_gpu(job: Job) -> bool:
    """Training runs and the trainers' external predictions (an external ensemble only averages)."""
    return job.stage in GPU_STAGES and not (job.stage == "external" and job.trainer == EV.ENSEMBLE)


def external_key(train_id: int, test_id: int, plans: str, model: str) -> str:
    return f"external-{train_id}-{test_id}-{plans}-{model}"


def train_key(dataset_id: int, plans: str, trainer: str, fold) -> str:
    return f"train-{dataset_id}-{plans}-{trainer}-fold{fold}"


def train_command(study: Study, layout: Layout, job: Job, device: str) -> List[str]:
    """``nnUNetv2_train`` for this fold as its state asks: fresh, ``--c`` to resume, ``--val`` when
    only the final validation is missing.  With a [schedule], through :mod:`.budget_train` so
    nnU-Net's own trainers run the same budget as ours."""
    folder = layout.fold_folder(job.dataset_id, job.trainer, job.plans, job.fold)
    state = []
    if folder is not None and (folder / "checkpoint_final.pth").is_file():
        state = ["--val"]
    elif folder is not None and (folder / "checkpoint_latest.pth").is_file():
        state = ["--c"]
    launcher = [sys.executable, "-m", "bus_nnunet.study.budget_train"] if study.schedule.overrides() else \
        [tool("nnUNetv2_train")]
    return [*launcher, str(job.dataset_id), study.configuration, job.fold, "-tr", job.trainer, "-p", job.plans,
            "-device", device, *study.nnunet_train_flags, *state]


# -- state -----------------------------------------------------------------------------------------
def _newest_checkpoint(layout: Layout, study: Study, dataset_id: int, plans_list) -> float:
    times = []
    for plans in plans_list:
        for trainer in study.trainers:
            for fold in study.folds:
                f = layout.fold_folder(dataset_id, trainer, plans, fold)
                if f is not None and (f / "checkpoint_final.pth").is_file():
                    times.append((f / "checkpoint_final.pth").stat().st_mtime)
    return max(times, default=0.0)


def is_done(job: Job, study: Study, layout: Layout) -> bool:
    if job.stage == "convert":
        name = layout.dataset_name(job.dataset_id)
        return bool(name) and (layout.raw / name / "dataset.json").is_file()
    if job.stage == "plan":
        name = layout.dataset_name(job.dataset_id)
        derived = study.trained_plans(job.plans)
        return plans_complete(layout, job.dataset_id, job.plans, study.configuration) and \
            (layout.preprocessed / name / f"{derived}.json").is_file()
    if job.stage == "train":
        folder = layout.fold_folder(job.dataset_id, job.trainer, job.plans, job.fold)
        return folder is not None and (folder / "checkpoint_final.pth").is_file() and \
            (folder / "validation" / "summary.json").is_file()
    if job.stage == "summary":
        page = layout.output / "summary.html"
        inputs = [layout.cv_report(d, study.trained_plans(p)) / "metrics.json" for d in EV.trained_datasets(study)
                  for p in study.plans]
        inputs += [EV.pair_folder(layout, train, test, study.trained_plans(p), model) / "metrics.json"
                   for train, test in EV.external_pairs(study) for p in study.plans
                   for model in EV.external_models(study)]
        return page.is_file() and all(f.is_file() and f.stat().st_mtime <= page.stat().st_mtime for f in inputs)
    if job.stage == "external":
        return EV.is_done(study, layout, job.dataset_id, job.test_id, job.plans, job.trainer)
    name = layout.dataset_name(job.dataset_id)
    if job.stage == "ensemble":
        marker = layout.results / name / "inference_information.json" if name else None
        if not marker or not marker.is_file():
            return False
        trained = [study.trained_plans(p) for p in study.plans]
        info = json.loads(marker.read_text())
        considered = {(m.get("trainer"), m.get("plans")) for m in info.get("considered_models", [])}
        # nnU-Net writes one such file per dataset: it is this study's only for these models and folds
        return considered == {(t, p) for t in study.trainers for p in trained} and \
            [str(f) for f in info.get("folds", [])] == [str(f) for f in study.folds] and \
            marker.stat().st_mtime >= _newest_checkpoint(layout, study, job.dataset_id, trained)
    marker = layout.cv_report(job.dataset_id, job.plans) / "metrics.json"
    return marker.is_file() and marker.stat().st_mtime >= _newest_checkpoint(layout, study, job.dataset_id,
                                                                               [job.plans])


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


def _process_alive(pid_file: Path) -> bool:
    try:
        pid, host = pid_file.read_text().split()
        if host != socket.gethostname():
            return True  # another node's job: trust its pid file until it writes an exit status
        os.kill(int(pid), 0)
        return True
    except (OSError, ValueError):
        return False


def _submitted_id(job: Job) -> Optional[str]:
    return job.slurm_file.read_text().split()[0] if job.slurm_file.is_file() else None


def slurm_queue(jobs: List[Job]) -> Dict[str, str]:
    """SLURM's state of every job id recorded at submission, from one ``squeue`` call (a study
    has hundreds of jobs); jobs that left the queue are absent, and so is everything without SLURM."""
    ids = sorted({i for i in map(_submitted_id, jobs) if i})
    if not ids:
        return {}
    try:
        out = subprocess.run(["squeue", "-h", "-j", ",".join(ids), "-o", "%i %T"], capture_output=True, text=True,
                             timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return {}
    return dict(line.split()[:2] for line in out.stdout.splitlines() if len(line.split()) >= 2)


def job_state(job: Job, study: Study, layout: Layout, queue: Optional[Dict[str, str]] = None) -> str:
    """``done`` / ``running`` / ``queued`` / ``failed`` / ``resumable`` / ``pending``; ``queue`` is
    :func:`slurm_queue` of the jobs asked about together (asked for this job alone if not given)."""
    if is_done(job, study, layout):
        return "done"
    if job.pid_file.is_file() and _process_alive(job.pid_file):
        return "running"
    slurm = (slurm_queue([job]) if queue is None else queue).get(_submitted_id(job) or "", "").lower()
    if slurm:
        return "running" if slurm == "running" else "queued"
    if job.rc_file.is_file() and job.rc_file.read_text().strip() != "0":
        return "failed"
    if job.stage == "train":
        folder = layout.fold_folder(job.dataset_id, job.trainer, job.plans, job.fold)
        if folder is not None and any((folder / c).is_file() for c in ("checkpoint_latest.pth",
                                                                          "checkpoint_final.pth")):
            return "resumable"
    return "pending"


def job_states(jobs: List[Job], study: Study, layout: Layout) -> Dict[str, str]:
    """:func:`job_state` of every job, with one ``squeue`` call for all of them."""
    queue = slurm_queue(jobs)
    return {j.key: job_state(j, study, layout, queue) for j in jobs}


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


def budget_mismatches(study: Study, layout: Layout) -> List[str]:
    """Folds trained (or started) with another schedule than the study's, one line each."""
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
