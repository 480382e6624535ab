"""Issue 22, item 4: two ``bus-nnunet study run`` of one study at once, as two real processes:
each job runs exactly once (its command started once, one nnU-Net training log per fold, no
``--val`` rerun over a fold the other run just finished), a run skips the jobs the other holds
and says so, and together they finish the study.  Then the job lock alone, without nnU-Net: a
killed holder leaves no lock behind, a job done meanwhile is not rerun, and a SLURM job waits for
the study run that holds its job."""
import os
import re
import signal
import subprocess
import sys
import threading

from bus_nnunet import tool_runner
from test_study import _env, _study_file

STUDY = """
name = "concurrent"
trainers = ["nnUNetTrainer"]
folds = [0]
[[datasets]]
id = 982
[[datasets]]
id = 983
"""


def test_two_study_runs_at_once_run_each_job_once(tmp_path):
    from bus_nnunet.synthetic import write_nnunet_raw
    for dataset_id, name in ((982, "SynthA"), (983, "SynthB")):  # two datasets: both runs get work
        write_nnunet_raw(tmp_path / "nn" / "raw", dataset_id, name, n_cases=6, size=(64, 64))
    for sub in ("pre", "res"):
        (tmp_path / "nn" / sub).mkdir()
    study = _study_file(tmp_path, STUDY)
    command = [str(tool_runner.tool("bus-nnunet")), "study", "run", str(study)]
    runs = [subprocess.Popen(command, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for _ in range(2)]
    outputs = [run.communicate(timeout=1500)[0] for run in runs]
    codes = [run.returncode for run in runs]
    both = "\n".join(outputs)

    logs = tmp_path / "out" / "logs"
    keys = sorted(p.stem for p in logs.glob("*.log"))
    assert len(keys) == 9, keys  # 2 plans, 2 training runs, 2 ensembles, 2 cv-reports, the summary
    for key in keys:  # run_job writes one header per start of a job's command
        assert (logs / f"{key}.log").read_text().count("\n===== ") == 1, f"{key} was started twice:\n{both}"
    ran = re.findall(r"^\[\d+/\d+\] (\S+): done", both, re.M)
    assert sorted(ran) == keys, both  # each job reported done by exactly one of the runs
    folds = sorted((tmp_path / "nn" / "res").rglob("fold_*"))
    assert len(folds) == 2
    for fold in folds:  # nnU-Net writes a new training log for each nnUNetv2_train, --val too
        assert len(list(fold.glob("training_log_*.txt"))) == 1, f"{fold} trained or validated twice"

    held = re.findall(r"^(\S+): held by another study run \(pid (\d+)\); skipped$", both, re.M)
    assert held, both
    for run, out, other in zip(runs, outputs, reversed(runs)):  # each names the other run as the holder
        for key, pid in re.findall(r"^(\S+): held by another study run \(pid (\d+)\)", out, re.M):
            assert pid == str(other.pid) and key in keys
    # a run that ended with jobs left to the other says so, with exit status 75 (not done, not failed)
    for out, code in zip(outputs, codes):
        assert code in (0, 75), out
        assert (code == 75) == ("this run left them to it" in out), out
    assert 0 in codes  # the run that ended last found every job done
    status = subprocess.run([*command[:2], "status", str(study)], env=_env(), capture_output=True, text=True)
    assert status.returncode == 0 and "9 done" in status.stdout, status.stdout


def _report_job(tmp_path):
    """A study job that needs no nnU-Net: its command only writes a file (the run builds it so)."""
    from bus_nnunet.study.run import StudyRun
    run = StudyRun.load(_study_file(tmp_path, STUDY))
    job = run.by_key()["report-982-nnUNetPlans"]
    job.cmd = [sys.executable, "-c", f"open({str(tmp_path / 'ran')!r}, 'a').write('x')"]
    run.job = lambda key: job  # the command built under the lock is this one
    return run, job


def _hold_lock(lock_file):
    """Another process holding a job's lock, as a study run running that job does."""
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, os, socket, sys, time\n"
        f"fd = os.open({str(lock_file)!r}, os.O_RDWR | os.O_CREAT)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX)\n"
        "os.write(fd, f'{os.getpid()} {socket.gethostname()}'.encode())\n"
        "print('locked', flush=True)\ntime.sleep(600)\n")], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_a_held_job_is_skipped_a_killed_holder_leaves_no_lock_and_a_done_job_is_not_rerun(tmp_path):
    """The lock and the re-check under it, without training: another process holding the job's
    lock makes this one skip it (naming that process); once that process is SIGKILLed the lock is
    free at once; a job another run finished since the stage began is reported done, not run."""
    from bus_nnunet.study.executors.local import attempt
    run, job = _report_job(tmp_path)
    layout = run.layout
    job.lock_file.parent.mkdir(parents=True)
    holder = _hold_lock(job.lock_file)
    try:
        assert attempt(run, job) == ("held", f"pid {holder.pid}")
        assert not (tmp_path / "ran").exists()
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    outcome, (rc, _) = attempt(run, job)  # the killed holder's lock died with it
    assert outcome == "ran" and rc == 0 and (tmp_path / "ran").read_text() == "x"
    assert job.lock_file.is_file()  # left in place, and harmless: nobody holds it

    marker = layout.cv_report(982, "nnUNetPlans") / "metrics.json"  # what is_done reads for a report
    marker.parent.mkdir(parents=True)
    marker.write_text("{}")
    assert attempt(run, job) == ("done", None)
    assert (tmp_path / "ran").read_text() == "x"  # not run again


def test_a_slurm_job_waits_for_the_study_run_that_holds_its_job(tmp_path, capsys):
    """What a SLURM node runs (StudyJobFunction) waits while a local study run holds the job, and
    then finds it done instead of running it a second time."""
    from bus_nnunet.study.executors.slurm import StudyJobFunction
    run, job = _report_job(tmp_path)
    layout = run.layout
    job.lock_file.parent.mkdir(parents=True)
    holder = _hold_lock(job.lock_file)
    result = {}
    node = threading.Thread(target=lambda: result.update(rc=StudyJobFunction()(str(run.file), job.key, "local")))
    try:
        node.start()
        node.join(3)
        assert node.is_alive()  # waiting for the lock
        marker = layout.cv_report(982, "nnUNetPlans") / "metrics.json"  # the holder finishes the job
        marker.parent.mkdir(parents=True)
        marker.write_text("{}")
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    node.join(30)
    assert result == {"rc": 0} and not job.log.exists()  # done by the holder: not run here
    assert f"{job.key}: held by another study run (pid {holder.pid}); waiting for it" in capsys.readouterr().out
