"""``bus-nnunet study`` on a real one-node SLURM cluster (``examples/slurm/one_node_cluster.sh``:
munged, slurmctld, slurmd on this machine).  One small synthetic study (one trainer x 3 folds,
nnU-Net's own commands, 2 epochs of 2 iterations) goes through three ``study run`` calls:

A. the whole study, submitted once: plan, training as a job array of 3 tasks (``%2``), then the
   ensemble, the cv-report and the summary under ``afterok``; fold 0 outlives its 2-minute time
   limit (a test hook sleeps after its first epoch), is requeued by submitit on SLURM's signal and
   resumes with ``--c``;
B. folds 1 and 2 deleted and trained again (so the reports made in A are stale); fold 1 is
   ``scancel``-ed while it trains, the node of fold 2 fails (slurmd and the job's processes
   killed, slurmd started again);
C. ``study run`` again: only the cancelled fold and the stale ensemble, report and summary are
   submitted.

The tests skip where SLURM, munge or root are missing; ``BUS_NNUNET_REQUIRE_SLURM=1`` (CI) makes
them fail instead.
"""
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Dict, List, Tuple

import pytest

from bus_nnunet import tool_runner

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "examples" / "slurm" / "one_node_cluster.sh"
TRAINERS = Path(__file__).resolve().parent / "slurm_trainers"
DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "scontrol", "scancel", "sinfo", "srun")
#: squeue states of a job that has not ended
LIVE = {"PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "COMPLETING", "CONFIGURING",
        "SUSPENDED", "SIGNALING", "STAGE_OUT", "RESIZING", "SPECIAL_EXIT", "STOPPED", "RESV_DEL_HOLD"}
TRAINER = "SlurmTimeLimitTrainer"
DATASET = 983
KEYS = {f"fold{f}": f"train-{DATASET}-nnUNetPlans-{TRAINER}-fold{f}" for f in range(3)}
KEYS.update(plan=f"plan-{DATASET}-nnUNetPlans", ensemble=f"ensemble-{DATASET}",
            report=f"report-{DATASET}-nnUNetPlans", summary="summary")
AFTER_TRAINING = ("ensemble", "report", "summary")
PHASE_TIMEOUT = 1200  # s; a phase takes 1-3 minutes on an idle 2-core machine

pytestmark = pytest.mark.timeout(2400)


def _missing() -> str:
    path = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
    absent = [t for t in DAEMONS + CLIENTS if shutil.which(t, path=path) is None]
    if absent:
        return f"{', '.join(absent)} not installed (apt-get install slurm-wlm munge)"
    if os.geteuid() != 0:
        return "not root: slurmd starts each job as the user who submitted it"
    return ""


class Cluster:
    """The running test cluster: its folder, the environment its clients need, and a node crash."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.conf = folder / "slurm.conf"
        self.env = {**os.environ, "BUS_NNUNET_SLURM_DIR": str(folder), "SLURM_CONF": str(self.conf),
                    "PATH": os.environ.get("PATH", "") + ":/usr/sbin:/sbin"}

    def script(self, action: str) -> subprocess.CompletedProcess:
        proc = subprocess.run([str(SCRIPT), action], env=self.env, capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            raise AssertionError(f"one_node_cluster.sh {action} exited {proc.returncode}:\n{proc.stderr}\n"
                                 f"{self.log_tails()}")
        return proc

    def call(self, *args: str) -> str:
        return subprocess.run(list(args), env=self.env, capture_output=True, text=True, timeout=60).stdout

    def squeue(self, ids) -> Dict[str, Tuple[str, str]]:
        """``id -> (state, reason)`` of the given job ids (array tasks as ``123_4``)."""
        out = self.call("squeue", "-h", "-r", "--states=all", "-j", ",".join(sorted(ids)), "-o", "%i|%T|%r")
        return {p[0]: (p[1], p[2]) for p in (line.split("|") for line in out.splitlines()) if len(p) == 3}

    def job(self, job_id: str) -> str:
        return self.call("scontrol", "-o", "show", "job", job_id)

    def node_state(self) -> str:
        return self.call("sinfo", "-h", "-N", "-o", "%t").strip()

    def crash_node(self) -> List[int]:
        """What a node failure does to the jobs on it: slurmd and every job process (slurmstepd and
        what runs under it) killed at once.  Returns the pids killed (the test cluster's own)."""
        pids = [int(p) for p in self.script("job-processes").stdout.split()]
        slurmd = int((self.folder / "slurmd.pid").read_text().strip())
        for pid in [slurmd, *pids]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return pids

    def log_tails(self) -> str:
        out = []
        for name in ("slurmctld.log", "slurmd.log"):
            log = self.folder / "log" / name
            if log.is_file():
                out.append(f"--- {log} (tail)\n" + "\n".join(log.read_text(errors="replace").splitlines()[-25:]))
        return "\n".join(out)


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    why = _missing()
    if why:
        if os.environ.get("BUS_NNUNET_REQUIRE_SLURM"):
            pytest.fail(f"BUS_NNUNET_REQUIRE_SLURM is set, but {why}")
        pytest.skip(why)
    cluster = Cluster(tmp_path_factory.mktemp("slurm") / "cluster")
    cluster.script("start")
    yield cluster
    cluster.script("stop")


# -- the study ---------------------------------------------------------------------------------------
STUDY = f"""name = "slurmtest"
output = "out"
trainers = ["{TRAINER}"]
folds = [0, 1, 2]
[[datasets]]
id = {DATASET}
[paths]
nnUNet_raw = "nn/raw"
nnUNet_preprocessed = "nn/pre"
nnUNet_results = "nn/res"
[schedule]
epochs = 2
iterations_per_epoch = 2
val_iterations = 1
[executor]
kind = "slurm"
processes = 1
augmentation_workers = 0
[executor.slurm]
partition = "cpu"
gpus_per_node = 0
cpus_per_task = 1
mem_gb = 1
timeout_min = {{timeout}}
cpu_timeout_min = 20
array_parallelism = 2
# submitit's default signal (90 s before the end) comes before a 2-minute limit has begun; SLURM
# sends it up to 30 s early, so 50-80 s after the start: after a normal training of this study
additional = {{{{ signal = "USR2@40" }}}}
"""


class Study:
    def __init__(self, root: Path, cluster: Cluster):
        self.root, self.cluster = root, cluster
        self.file = root / "study.toml"
        self.logs = root / "out" / "logs"
        self.results = root / "nn" / "res" / f"Dataset{DATASET}_SlurmSynth" / f"{TRAINER}__nnUNetPlans__2d"
        self.set_timeout(2)

    def set_timeout(self, minutes: int) -> None:
        self.file.write_text(STUDY.format(timeout=minutes))

    def env(self, **extra) -> Dict[str, str]:
        env = {k: v for k, v in self.cluster.env.items() if not k.startswith("nnUNet_")}
        return env | {"nnUNet_extTrainer": str(TRAINERS), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                      "BUS_NNUNET_TORCH_THREADS": "1"} | extra

    def bus(self, *args, check=True, **extra) -> subprocess.CompletedProcess:
        proc = subprocess.run([str(tool_runner.tool("bus-nnunet")), "study", *args, str(self.file)], env=self.env(**extra),
                              capture_output=True, text=True, timeout=600)
        if check and proc.returncode != 0:
            raise AssertionError(f"study {args} exited {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
        return proc

    def ids(self) -> Dict[str, str]:
        """``job key -> SLURM job id`` of the last submission of each job."""
        return {p.stem: p.read_text().split()[0] for p in self.logs.glob("*.slurm")}

    def fold(self, f) -> Path:
        return self.results / f"fold_{f}"

    def trained(self, f) -> bool:
        return (self.fold(f) / "checkpoint_final.pth").is_file() and \
            (self.fold(f) / "validation" / "summary.json").is_file()

    def status(self) -> "Status":
        return Status(self.bus("status", check=False).stdout)

    def wait(self, ids, observe=None, timeout=PHASE_TIMEOUT) -> Dict[str, Tuple[str, str]]:
        """Poll SLURM until every job of ``ids`` has ended; ``observe(states)`` sees each poll."""
        deadline = time.time() + timeout
        while True:
            states = self.cluster.squeue(ids)
            if observe:
                observe(states)
            if not any(states.get(i, ("", ""))[0] in LIVE for i in ids):
                return states
            if time.time() > deadline:
                raise AssertionError(f"jobs still not ended after {timeout} s: {states}\n{self.status().text}\n"
                                     f"{self.cluster.log_tails()}")
            time.sleep(2)

    def wait_for_log(self, key: str, text: str, timeout=600) -> None:
        log = self.logs / f"{key}.log"
        deadline = time.time() + timeout
        while not (log.is_file() and text in log.read_text(errors="replace")):
            if time.time() > deadline:
                raise AssertionError(f"{key} never logged {text!r}:\n{log.read_text() if log.is_file() else '(no log)'}"
                                     f"\n{self.status().text}\n{self.cluster.log_tails()}")
            time.sleep(1)


class Status:
    """``study status`` output: the state column per job (``fold0`` ... ``summary``) and the lines
    that explain cancelled / stale / blocked / failed jobs."""

    def __init__(self, text: str):
        self.text = text
        lines = text.splitlines()
        header = next(i for i, line in enumerate(lines) if line.startswith("dataset"))
        spans = [m.span() for m in re.finditer(r"-+", lines[header + 1])]
        self.state: Dict[str, str] = {}
        for line in lines[header + 2:]:
            if not line.strip():
                break
            cells = [line[a:b if i < len(spans) - 1 else None].strip() for i, (a, b) in enumerate(spans)]
            what, fold, state = cells[2], cells[3], cells[4]
            self.state[f"fold{fold}" if fold else what] = state

    def why(self, name: str) -> str:
        match = re.search(rf"^{re.escape(KEYS[name])}: (\w+): (.*)$", self.text, re.M)
        return f"{match.group(1)}: {match.group(2)}" if match else ""


def _checkpoints(study: Study) -> Dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in study.results.rglob("checkpoint_final.pth")}


def _attempts(log: Path) -> List[str]:
    """The job log's runs, one text per attempt (each begins with its command line)."""
    return log.read_text(errors="replace").split("\n===== ")[1:]


@pytest.fixture(scope="module")
def study(slurm_cluster, tmp_path_factory):
    from bus_nnunet.synthetic import write_nnunet_raw
    root = tmp_path_factory.mktemp("slurm_study")
    write_nnunet_raw(root / "nn" / "raw", DATASET, "SlurmSynth", n_cases=8, size=(64, 64))
    for sub in ("pre", "res"):
        (root / "nn" / sub).mkdir()
    return Study(root, slurm_cluster)


@pytest.fixture(scope="module")
def run_a(study):
    """A: the whole study submitted once; fold 0 outlives its time limit on the first attempt."""
    started = time.time()
    submitted = study.bus("run", BUS_NNUNET_TEST_SLOW_FOLDS="0")
    ids = study.ids()
    # what SLURM was given, read back from SLURM while everything after the plan still waits
    jobs = {name: study.cluster.job(ids[KEYS[name]]) for name in KEYS}
    running_folds, seen = [], {}

    def observe(states):
        running_folds.append(sum(states.get(ids[KEYS[f"fold{f}"]], ("",))[0] == "RUNNING" for f in range(3)))
        slow = states.get(ids[KEYS["fold0"]], ("", ""))[0]
        if slow and (not seen.get("fold0") or seen["fold0"][-1] != slow):
            seen.setdefault("fold0", []).append(slow)

    final = study.wait(list(ids.values()), observe)
    return {"submitted": submitted, "ids": ids, "jobs": jobs, "running_folds": running_folds,
            "fold0_states": seen.get("fold0", []), "final": final, "restarts": study.cluster.job(ids[KEYS["fold0"]]),
            "status": study.status(), "checkpoints": _checkpoints(study), "seconds": time.time() - started}


def test_whole_study_is_one_submission_with_an_array_and_afterok(study, run_a):
    ids, jobs = run_a["ids"], run_a["jobs"]
    assert "follow it with: bus-nnunet study status" in run_a["submitted"].stdout
    assert set(ids) == set(KEYS.values())  # every job submitted by the one `study run`
    # training: one job array of the three folds, at most two at once (array_parallelism = 2)
    array = {ids[KEYS[f"fold{f}"]].split("_")[0] for f in range(3)}
    assert len(array) == 1, ids
    assert sorted(ids[KEYS[f"fold{f}"]] for f in range(3)) == [f"{min(array)}_{t}" for t in range(3)]
    assert "ArrayTaskThrottle=2" in jobs["fold1"], jobs["fold1"]
    assert max(run_a["running_folds"]) == 2, run_a["running_folds"]

    def needs(name):
        return set(re.findall(r"afterok:(\d+(?:_\d+)?)", jobs[name]))
    assert needs("fold0") == {ids[KEYS["plan"]]}
    trains = {ids[KEYS[f"fold{f}"]] for f in range(3)}
    assert needs("ensemble") == trains and needs("report") == trains
    assert needs("summary") == {ids[KEYS["ensemble"]], ids[KEYS["report"]]}
    assert all(state == "COMPLETED" for state, _ in run_a["final"].values()), run_a["final"]
    status = run_a["status"]
    assert set(status.state.values()) == {"done"}, status.text
    assert (study.root / "out" / "summary.html").is_file() and "summary: " in status.text
    print(f"\nphase A (whole study with a requeue) took {run_a['seconds']:.0f} s")


def test_time_limit_requeues_and_resumes_from_the_checkpoint(study, run_a):
    """Fold 0 slept past SLURM's signal: submitit requeued the same job (same id, Restarts=1) and the
    second attempt went on from checkpoint_latest.pth (--c): its log starts at epoch 1."""
    assert "Restarts=1" in run_a["restarts"], run_a["restarts"]
    states = run_a["fold0_states"]  # as squeue showed it: it ran, waited again, ran again
    assert "RUNNING" in states and "PENDING" in states[states.index("RUNNING"):], states
    first, second = _attempts(study.logs / f"{KEYS['fold0']}.log")
    assert " --c" not in first.splitlines()[0] and "test hook: sleeping" in first and "Epoch 0" in first
    assert second.splitlines()[0].endswith(" --c"), second.splitlines()[0]
    assert "Epoch 1" in second and "Epoch 0" not in second, second[-3000:]
    assert study.trained(0) and run_a["status"].state["fold0"] == "done"
    # submitit's own log of the job (the .slurm file names its stdout): SLURM's signal, then the requeue
    stdout = Path((study.logs / f"{KEYS['fold0']}.slurm").read_text().split(maxsplit=1)[1].strip())
    submitit_log = stdout.read_text(errors="replace") + stdout.with_suffix(".err").read_text(errors="replace")
    assert "this job is timed-out" in submitit_log and "Requeued job" in submitit_log, submitit_log[-3000:]


def test_status_asks_slurm_once(study, run_a, tmp_path):
    """``study status`` of 7 submitted jobs calls SLURM's clients once (one squeue for all)."""
    wrappers = tmp_path / "bin"
    wrappers.mkdir()
    calls = tmp_path / "calls"
    for tool in CLIENTS + ("sacct",):
        real = shutil.which(tool, path=study.cluster.env["PATH"])
        script = f'#!/bin/sh\necho "{tool} $*" >> "{calls}"\n' + (f'exec "{real}" "$@"\n' if real else "exit 1\n")
        (wrappers / tool).write_text(script)
        (wrappers / tool).chmod(0o755)
    proc = subprocess.run([str(tool_runner.tool("bus-nnunet")), "study", "status", str(study.file)],
                          env=study.env(PATH=f"{wrappers}:{study.cluster.env['PATH']}"), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert calls.read_text().count("\n") == 1 and calls.read_text().startswith("squeue "), calls.read_text()


@pytest.fixture(scope="module")
def run_b(study, run_a):
    """B: folds 1 and 2 trained again; fold 1 is scancel-ed, fold 2's node fails, both while they
    sleep after their first epoch (checkpoint_latest.pth written)."""
    started = time.time()
    study.set_timeout(10)  # this time no time limit comes between the test and its node failure
    for f in (1, 2):
        shutil.rmtree(study.fold(f))
    after_removal = study.status()
    study.bus("run", BUS_NNUNET_TEST_SLOW_FOLDS="1,2")
    ids = study.ids()
    for f in (1, 2):
        study.wait_for_log(KEYS[f"fold{f}"], "test hook: sleeping")
    cancelled = ids[KEYS["fold1"]]
    study.cluster.call("scancel", cancelled)
    deadline = time.time() + 120
    while study.cluster.squeue([cancelled]).get(cancelled, ("",))[0] != "CANCELLED":
        assert time.time() < deadline, study.cluster.squeue([cancelled])
        time.sleep(1)
    # the node fails: slurmd and the job processes die together, as in a crash
    killed = study.cluster.crash_node()
    crashed = time.time()
    fold2 = ids[KEYS["fold2"]]
    seen: List[Tuple[str, str, bool]] = []  # (SLURM state, study status, fold 2 trained) while it recovers

    def look():  # `study status` (a few CPU seconds) once per state SLURM gives fold 2
        slurm = study.cluster.squeue([fold2]).get(fold2, ("", ""))[0]
        if not seen or seen[-1][0] != slurm:
            seen.append((slurm, study.status().state["fold2"], study.trained(2)))

    while study.cluster.node_state() not in ("down*", "down"):
        assert time.time() - crashed < 300, f"the node never went down: {study.cluster.node_state()}"
        look()
        time.sleep(2)
    down_after = time.time() - crashed
    look()
    study.cluster.script("start")  # slurmd again; the node returns to service by itself
    study.wait(list({ids[k] for k in ids}), observe=lambda states: look())
    seen.append(("", study.status().state["fold2"], study.trained(2)))
    return {"ids": ids, "after_removal": after_removal, "status": study.status(), "seen": seen, "killed": killed,
            "down_after": down_after, "fold2_job": study.cluster.job(fold2), "seconds": time.time() - started,
            "jobcomp": (study.cluster.folder / "jobcomp.log").read_text()}


def test_scancel_of_one_array_task_says_cancelled_and_the_other_finishes(study, run_b):
    status = run_b["status"]
    assert status.state["fold1"] == "cancelled", status.text
    assert status.why("fold1") == f"cancelled: SLURM job {run_b['ids'][KEYS['fold1']]} was cancelled", status.text
    assert status.state["fold2"] == "done" and study.trained(2), status.text
    assert status.state["fold0"] == "done" and status.state["plan"] == "done"
    print(f"\nstudy status after the scancel (phase B, {run_b['seconds']:.0f} s):\n{status.text}")


def test_node_failure_requeues_and_never_says_done_without_outputs(study, run_b):
    seen = run_b["seen"]
    assert run_b["killed"], "no job process was running on the node when it failed"
    assert all(trained for _, state, trained in seen if state == "done"), seen
    assert any(state in ("queued", "failed") for _, state, _ in seen), seen  # SLURM's word reached status
    fold2 = run_b["ids"][KEYS["fold2"]]
    log = [line for line in run_b["jobcomp"].splitlines() if f"JobId={fold2.split('_')[0]} " in line or
           f"ArrayJobId={fold2.split('_')[0]} ArrayTaskId={fold2.split('_')[1]} " in line]
    assert any("JobState=NODE_FAIL" in line for line in log), run_b["jobcomp"]
    # requeued by SLURM: the same job ran again and went on from the checkpoint of its first epoch
    assert "Restarts=1" in run_b["fold2_job"] and "JobState=COMPLETED" in run_b["fold2_job"], run_b["fold2_job"]
    attempts = _attempts(study.logs / f"{KEYS['fold2']}.log")
    assert attempts[-1].splitlines()[0].endswith(" --c") and "Epoch 0" not in attempts[-1]
    assert study.trained(2) and run_b["status"].state["fold2"] == "done"
    print(f"\nnode down {run_b['down_after']:.0f} s after the crash; fold 2 seen as {seen}")


def test_retrained_folds_make_the_reports_stale(run_b):
    removed = run_b["after_removal"]
    for name in AFTER_TRAINING:
        assert removed.state[name] == "stale", removed.text
    assert re.search(rf"{TRAINER} fold [12] removed since this report", removed.why("report")), removed.text
    status = run_b["status"]
    for name in AFTER_TRAINING:  # fold 2 is trained again, fold 1 cancelled: still not what they describe
        assert status.state[name] == "stale", status.text
    assert f"{TRAINER} fold 2 trained after this report" in status.why("report") or \
        f"{TRAINER} fold 1 removed since this report" in status.why("report"), status.text
    print(f"\nstudy status after deleting folds 1 and 2:\n{removed.text}")


@pytest.fixture(scope="module")
def run_c(study, run_b):
    """C: the next `study run` after B."""
    started = time.time()
    before_ids, before = study.ids(), _checkpoints(study)
    submitted = study.bus("run")
    ids = study.ids()
    study.wait([ids[k] for k in ids if ids[k] != before_ids.get(k)])
    return {"before_ids": before_ids, "ids": ids, "checkpoints_before": before, "submitted": submitted,
            "status": study.status(), "seconds": time.time() - started}


def test_next_run_resubmits_only_the_cancelled_task_and_the_stale_jobs(study, run_c):
    resubmitted = {k for k, i in run_c["ids"].items() if run_c["before_ids"].get(k) != i}
    assert resubmitted == {KEYS["fold1"], KEYS["ensemble"], KEYS["report"], KEYS["summary"]}, run_c["submitted"].stdout
    # the cancelled fold went on from the checkpoint it had when it was cancelled
    last = _attempts(study.logs / f"{KEYS['fold1']}.log")[-1]
    assert last.splitlines()[0].endswith(" --c") and "Epoch 0" not in last
    for path, mtime in run_c["checkpoints_before"].items():  # folds 0 and 2: not trained again
        assert path.stat().st_mtime_ns == mtime, f"{path} was trained again"
    status = run_c["status"]
    assert set(status.state.values()) == {"done"}, status.text
    page = study.root / "out" / "summary.html"
    assert all(page.stat().st_mtime > p.stat().st_mtime for p in study.results.rglob("checkpoint_final.pth"))
    print(f"\nstudy status after the next run (phase C, {run_c['seconds']:.0f} s):\n{status.text}")
