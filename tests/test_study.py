"""``bus-nnunet study``: a synthetic 2-dataset x 2-trainer x 2-fold study through the local
executor to summary.html (with a training run SIGKILLed on the way and the rerun finishing it
without retraining anything), the submitit path (its local cluster, and the sbatch files and
dependencies it would give SLURM), a ResEnc plan with one of our trainers, and bad study files."""
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

import _nnunet
from bus_nnunet import tool_runner
from bus_nnunet.errors import UserError

SMOKE = """
[schedule]
epochs = 1
iterations_per_epoch = 2
val_iterations = 1
"""


def _study_file(folder: Path, body: str, executor: str = 'kind = "local"\ngpus = 0\n', output: str = "out") -> Path:
    text = (f'output = "{output}"\n{body}\n[paths]\nnnUNet_raw = "nn/raw"\nnnUNet_preprocessed = "nn/pre"\n'
            f'nnUNet_results = "nn/res"\n{SMOKE}\n[executor]\nprocesses = 2\naugmentation_workers = 0\n{executor}')
    path = folder / f"study_{abs(hash(body + executor)) % 10**6}.toml"
    path.write_text(text)
    return path


def _env():
    # the study's own [paths] must win over whatever the test session exported
    return {k: v for k, v in os.environ.items() if not k.startswith("nnUNet_")} | {"OMP_NUM_THREADS": "2"}


def _run(args, check=True, **kw):
    proc = subprocess.run([str(tool_runner.tool("bus-nnunet")), *map(str, args)], env=_env(), capture_output=True,
                          text=True, timeout=1500, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} exited {proc.returncode}\n{proc.stdout[-5000:]}\n{proc.stderr[-5000:]}")
    return proc


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    from bus_nnunet.synthetic import write_busi_layout, write_nnunet_raw
    root = tmp_path_factory.mktemp("study")
    write_busi_layout(root / "busi_src", counts={"benign": 6, "malignant": 4, "normal": 0}, size=(64, 64))
    write_nnunet_raw(root / "nn" / "raw", 982, "SynthB", n_cases=10, size=(64, 64))
    for sub in ("pre", "res"):
        (root / "nn" / sub).mkdir()
    return root


TWO_BY_TWO = """
name = "smoke"
trainers = ["nnUNetTrainer", "nnUNetTrainerUS"]
folds = [0, 1]
[[datasets]]
id = 981
converter = "busi"
source = "busi_src"
convert_args = ["--folds", "2"]
[[datasets]]
id = 982
"""


@pytest.fixture(scope="module")
def finished_study(sources):
    """The study run once with one training run SIGKILLed mid-way, then rerun to the end."""
    study = _study_file(sources, TWO_BY_TWO)
    logs = sources / "out" / "logs"
    victim = logs / "train-982-nnUNetPlans-nnUNetTrainerUS-fold0.pid"
    proc = subprocess.Popen([str(tool_runner.tool("bus-nnunet")), "study", "run", str(study)], env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 1200
    while not victim.is_file() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert victim.is_file(), "the training run to kill never started"
    time.sleep(3)  # in the middle of nnUNetv2_train
    os.kill(int(victim.read_text().split()[0]), signal.SIGKILL)
    first_out, _ = proc.communicate(timeout=1500)
    first_rc = proc.returncode
    models = sources / "nn" / "res"
    finished = {p: p.stat().st_mtime_ns for p in models.rglob("checkpoint_final.pth")}
    second = _run(["study", "run", study])
    return {"study": study, "first_out": first_out, "first_rc": first_rc, "finished_before_rerun": finished,
            "rerun": second, "root": sources}


def test_killed_training_run_fails_alone_and_the_rerun_completes_it(finished_study):
    first = finished_study["first_out"]
    assert finished_study["first_rc"] == 1
    assert "train-982-nnUNetPlans-nnUNetTrainerUS-fold0: FAILED (exit status -9)" in first
    # the other training runs went on; only what needs the killed run waited
    assert "train-982-nnUNetPlans-nnUNetTrainerUS-fold1: done" in first
    assert "report-982-nnUNetPlans: skipped" in first and "report-981-nnUNetPlans: done" in first
    # the rerun trained only the killed fold: every checkpoint_final already there is untouched
    before = finished_study["finished_before_rerun"]
    assert len(before) == 7
    for path, mtime in before.items():
        assert path.stat().st_mtime_ns == mtime, f"{path} was trained again"
    rerun = finished_study["rerun"].stdout
    assert "train-982-nnUNetPlans-nnUNetTrainerUS-fold0: done" in rerun
    ran = [line.split("]")[1].split(":")[0].strip() for line in rerun.splitlines() if line.startswith("[")]
    assert sorted(ran) == sorted(["train-982-nnUNetPlans-nnUNetTrainerUS-fold0", "ensemble-982",
                                  "report-982-nnUNetPlans", "summary"])


def test_status_table_of_the_finished_study(finished_study):
    proc = _run(["study", "status", finished_study["study"]])
    rows = [line.split() for line in proc.stdout.splitlines() if line.startswith("Dataset98")]
    trains = [r for r in rows if len(r) >= 5 and r[3] in ("0", "1")]
    assert len(trains) == 8 and all(r[4] == "done" for r in trains)
    assert "16 done" in proc.stdout and "summary: " in proc.stdout


def test_summary_page_renders_its_table(finished_study):
    out = finished_study["root"] / "out"
    md = (out / "summary.md").read_text()
    for name in ("Dataset981_BUSI", "Dataset982_SynthB"):
        assert f"## {name}" in md
    assert md.count("**(best)**") == 2  # one best trainer per dataset
    assert "Paired Dice against nnUNetTrainer" in md and "nnUNetv2_find_best_configuration: " in md
    assert "nnU-Net's cross-validation Dice" in md
    metrics = json.loads((out / "cv_report" / "Dataset981" / "nnUNetPlans" / "metrics.json").read_text())
    dice = metrics["trainers"]["nnUNetTrainerUS"]["all_cases"]["per_image"]["dice"]
    assert f"{dice['mean']:.3f} ± {dice['std']:.3f}" in md  # the table is cv-report's numbers
    page = (out / "summary.html").read_text()
    assert "src=\"http" not in page and "<link" not in page and page.count("data:image/png;base64,") >= 6
    from _browser import screenshot_pixels
    pixels = screenshot_pixels(out / "summary.html", out / "screenshot.png")
    best_row = (pixels == (232, 245, 233)).all(1).sum()  # the best row's background (#e8f5e9)
    header = (pixels == (238, 238, 238)).all(1).sum()  # table headers (#eee)
    assert best_row > 1000 and header > 1000, "the results table was not rendered"


def test_a_retrained_fold_makes_what_used_it_stale_and_the_rerun_recomputes_only_that(finished_study):
    """Issue 25 part 3: a fold trained again after the ensemble, report and summary were computed
    (its checkpoint_final.pth rewritten: a new mtime) makes exactly those stale -- status says which
    fold, and the next run recomputes them and nothing else; a fold removed is named too, and put
    back as it was, nothing is stale."""
    root, study = finished_study["root"], finished_study["study"]
    models = root / "nn" / "res" / "Dataset981_BUSI" / "nnUNetTrainerUS__nnUNetPlans__2d"
    checkpoint = models / "fold_1" / "checkpoint_final.pth"
    os.utime(checkpoint, ns=(time.time_ns(), time.time_ns()))  # what a retraining leaves: a new checkpoint
    status = _run(["study", "status", study], check=False).stdout
    assert "report-981-nnUNetPlans: stale: nnUNetTrainerUS fold 1 trained after this report" in status
    assert "ensemble-981: stale: nnUNetTrainerUS fold 1 trained after this ensemble" in status
    assert "summary: stale: nnUNetTrainerUS fold 1 of Dataset981_BUSI (nnUNetPlans) trained after this summary" \
        in status
    assert "13 done, 3 stale" in status  # the other dataset's ensemble and report are not touched

    from bus_nnunet.study.run import StudyRun
    moved = models / "fold_1_elsewhere"
    (models / "fold_1").rename(moved)
    try:
        states = StudyRun.load(study).states()
        assert states["report-981-nnUNetPlans"] == ("stale", "nnUNetTrainerUS fold 1 removed since this report")
        assert states["train-981-nnUNetPlans-nnUNetTrainerUS-fold1"][0] == "pending"
    finally:
        moved.rename(models / "fold_1")

    checkpoints = {p: p.stat().st_mtime_ns for p in (root / "nn" / "res").rglob("checkpoint_final.pth")}
    rerun = _run(["study", "run", study]).stdout
    ran = [line.split("]")[1].split(":")[0].strip() for line in rerun.splitlines() if line.startswith("[")]
    assert sorted(ran) == ["ensemble-981", "report-981-nnUNetPlans", "summary"]
    assert all(p.stat().st_mtime_ns == t for p, t in checkpoints.items())  # nothing trained
    assert {state for state, _ in StudyRun.load(study).states().values()} == {"done"}


def test_stale_reason_names_a_fold_retrained_added_or_removed(tmp_path):
    """The record of a job's inputs against the disk, fold by fold, without nnU-Net."""
    import types
    from bus_nnunet.study.inputs import checkpoint_record, stale_reason
    layout = types.SimpleNamespace(fold_folder=lambda d, t, p, f: tmp_path / f"{t}__{p}" / f"fold_{f}")

    def train(fold):
        (tmp_path / "T__P" / f"fold_{fold}").mkdir(parents=True, exist_ok=True)
        (tmp_path / "T__P" / f"fold_{fold}" / "checkpoint_final.pth").write_bytes(b"w" * (10 + fold))

    train(0)
    recorded = checkpoint_record(layout, 5, ["P"], ["T"], [0, 1])
    assert stale_reason(recorded, checkpoint_record(layout, 5, ["P"], ["T"], [0, 1]), "report") is None
    train(1)
    assert stale_reason(recorded, checkpoint_record(layout, 5, ["P"], ["T"], [0, 1]), "report") == \
        "T fold 1 trained (added) after this report"
    recorded = checkpoint_record(layout, 5, ["P"], ["T"], [0, 1])
    (tmp_path / "T__P" / "fold_0" / "checkpoint_final.pth").write_bytes(b"retrained, other size")
    assert stale_reason(recorded, checkpoint_record(layout, 5, ["P"], ["T"], [0, 1]), "ensemble") == \
        "T fold 0 trained after this ensemble"
    recorded = checkpoint_record(layout, 5, ["P"], ["T"], [0, 1])
    (tmp_path / "T__P" / "fold_1" / "checkpoint_final.pth").unlink()
    assert stale_reason(recorded, checkpoint_record(layout, 5, ["P"], ["T"], [0, 1]), "summary",
                        name_of=lambda d: f"Dataset{d:03d}_X") == "T fold 1 of Dataset005_X (P) removed since this summary"


def test_submitit_local_cluster_runs_the_same_submission(finished_study):
    """Executor kind slurm through submitit's local cluster: a study of folds already trained (none
    is trained again) gets its ensemble, report and summary from jobs submitted by the same code
    that submits to SLURM, each waiting for the one it needs; submitit keeps its own log per job.
    (Training as a job array is in the sbatch test below; running it here would only repeat the
    local executor's training at the cost of a minute.)"""
    root = finished_study["root"]
    study = _study_file(root, 'trainers = ["nnUNetTrainerUS"]\nfolds = [0, 1]\n[[datasets]]\nid = 982\n',
                        executor='kind = "slurm"\n[executor.slurm]\ngpus_per_node = 0\n', output="slurm_out")
    checkpoints = {p: p.stat().st_mtime_ns for p in (root / "nn" / "res").rglob("checkpoint_final.pth")}
    proc = _run(["study", "run", study, "--executor", "submitit-local"])
    for stage in ("ensemble", "report", "summary"):
        assert f"submitted {stage}: " in proc.stdout
    assert "submitted train" not in proc.stdout
    assert all(p.stat().st_mtime_ns == t for p, t in checkpoints.items())
    assert "failed" not in _run(["study", "status", study]).stdout
    assert (root / "slurm_out" / "summary.html").is_file()
    info = json.loads((root / "nn" / "res" / "Dataset982_SynthB" / "inference_information.json").read_text())
    assert [m["trainer"] for m in info["considered_models"]] == ["nnUNetTrainerUS"]
    assert list((root / "slurm_out" / "slurm").rglob("*_log.out"))  # submitit's own logs per job


def test_sbatch_gpu_options(tmp_path, monkeypatch):
    """What a GPU cluster would be given, read from the sbatch files submitit writes (a stand-in
    sbatch records them): the study file's GPU partition, time, GPUs, CPUs, memory and account for
    training, the CPU partition for the other stages.  (The job array, its parallelism and the
    afterok chain are checked on a real SLURM cluster: tests/test_slurm_cluster.py.)"""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text('#!/bin/sh\nn=$(ls "$SBATCH_LOG" | wc -l); n=$((n + 100))\n'
                                    'cp "$1" "$SBATCH_LOG/$n.sh"\necho "Submitted batch job $n"\n')
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")  # submitit checks that it is on a cluster
    for tool in ("sbatch", "srun"):
        (bin_dir / tool).chmod(0o755)
    (tmp_path / "sbatch_log").mkdir()
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("SBATCH_LOG", str(tmp_path / "sbatch_log"))
    study = _study_file(tmp_path, 'trainers = ["nnUNetTrainerUS", "SSNetTrainer"]\nfolds = [0, 1]\n'
                        '[[datasets]]\nid = 501\nconverter = "busi"\nsource = "src"\n',
                        executor='kind = "slurm"\n[executor.slurm]\npartition = "gpu"\ncpu_partition = "cpu"\n'
                                 'timeout_min = 600\ngpus_per_node = 1\ncpus_per_task = 6\nmem_gb = 48\n'
                                 'array_parallelism = 3\naccount = "lab"\n')
    from bus_nnunet.study.executors import slurm as S
    from bus_nnunet.study.run import StudyRun
    run = StudyRun.load(study)
    layout = run.layout
    ids = S.submit(run, run.jobs, "slurm", log=lambda m: None)
    files = {int(p.stem): p.read_text() for p in (tmp_path / "sbatch_log").glob("*.sh")}
    by_job = {key: files[int(job_id.split("_")[0])] for key, job_id in ids.items()}

    def option(text, name):
        return [line.split(f"--{name}=", 1)[1] for line in text.splitlines() if line.startswith(f"#SBATCH --{name}=")]

    convert, report = by_job["convert-501"], by_job["report-501-nnUNetPlans"]
    for cpu_job in (convert, report):
        assert option(cpu_job, "partition") == ["cpu"] and option(cpu_job, "gpus-per-node") in ([], ["0"])
    train = by_job["train-501-nnUNetPlans-SSNetTrainer-fold1"]
    assert option(train, "partition") == ["gpu"] and option(train, "time") == ["600"]
    assert option(train, "gpus-per-node") == ["1"] and option(train, "cpus-per-task") == ["6"]
    assert option(train, "mem") == ["48GB"] and option(train, "account") == ["lab"]
    command = run.by_key()["train-501-nnUNetPlans-SSNetTrainer-fold1"].cmd  # as the node builds it
    assert command[command.index("-device") + 1] == "cuda"
    assert (layout.logs / "train-501-nnUNetPlans-SSNetTrainer-fold1.slurm").read_text().split()[0] == \
        ids["train-501-nnUNetPlans-SSNetTrainer-fold1"]


def test_resenc_plan_with_our_trainer(sources, tmp_path):
    """nnU-Net's ResEnc M preset planned by the study, one of our networks trained on it: it takes
    the patch and batch size from that plan, and nnUNetv2_predict -p uses it."""
    study = _study_file(sources, 'trainers = ["AttUNet_CBAM_BCE_Trainer"]\nplans = ["nnUNetResEncUNetMPlans"]\n'
                        'folds = [0]\n[[datasets]]\nid = 982\n', output="resenc_out")
    _run(["study", "run", study])
    pre = sources / "nn" / "pre" / "Dataset982_SynthB"
    plans = json.loads((pre / "nnUNetResEncUNetMPlans.json").read_text())["configurations"]["2d"]
    assert "ResidualEncoderUNet" in plans["architecture"]["network_class_name"]
    model = sources / "nn" / "res" / "Dataset982_SynthB" / "AttUNet_CBAM_BCE_Trainer__nnUNetResEncUNetMPlans__2d"
    debug = json.loads((model / "fold_0" / "debug.json").read_text())
    assert int(debug["batch_size"]) == plans["batch_size"]
    assert f"'patch_size': {plans['patch_size']}" in debug["configuration_manager"]
    env = {"nnUNet_raw": str(sources / "nn" / "raw"), "nnUNet_preprocessed": str(sources / "nn" / "pre"),
           "nnUNet_results": str(sources / "nn" / "res")}
    images = sources / "nn" / "raw" / "Dataset982_SynthB" / "imagesTr"
    _nnunet.run(["nnUNetv2_predict", "-i", images, "-o", tmp_path / "pred", "-d", 982, "-c", "2d", "-p",
                 "nnUNetResEncUNetMPlans", "-tr", "AttUNet_CBAM_BCE_Trainer", "-f", 0, "-device", "cpu",
                 "-npp", 0, "-nps", 0], env)
    assert len(list((tmp_path / "pred").glob("*.png"))) == 10


def test_bad_study_files_name_the_key(tmp_path):
    from bus_nnunet.study.config import load_study

    def error(text):
        path = tmp_path / "bad.toml"
        path.write_text(text)
        with pytest.raises(UserError) as e:
            load_study(path)
        return str(e.value)

    ok = 'trainers = ["nnUNetTrainerUS"]\n[[datasets]]\nid = 501\n'
    (tmp_path / "ok.toml").write_text(ok)
    assert load_study(tmp_path / "ok.toml").folds == [0, 1, 2, 3, 4]
    assert "trainers: Field required" in error('[[datasets]]\nid = 501\n')
    assert "datasets[0].converter: unknown converter 'bussi': did you mean busi" in \
        error(ok.replace("id = 501", 'id = 501\nconverter = "bussi"\nsource = "x"'))
    # the converter registry's own lookup: an alias `bus-nnunet convert` accepts is accepted here too
    (tmp_path / "alias.toml").write_text(ok.replace("id = 501", 'id = 501\nconverter = "bus-bra"\nsource = "x"'))
    assert load_study(tmp_path / "alias.toml").datasets[0].converter == "bus-bra"
    assert "datasets[0]: give converter and source together" in error(ok.replace("id = 501", 'id = 501\nsource = "x"'))
    assert "plans: unknown plans 'nnUNetResEncPlans'" in error('plans = ["nnUNetResEncPlans"]\n' + ok)
    assert "executor.slurm.partiton: unknown key" in error(ok + '[executor]\nkind = "slurm"\n[executor.slurm]\n'
                                                                'partiton = "gpu"\n')
    assert "executor.kind: unknown executor 'sge': known: local, slurm" in error(ok + '[executor]\nkind = "sge"\n')
    assert "schedule.epochs: Input should be greater than or equal to 1" in error(ok + "[schedule]\nepochs = 0\n")
    assert "datasets: id repeated" in error(ok + "[[datasets]]\nid = 501\n")
    assert "baseline 'X' is not one of the study's trainers" in error('baseline = "X"\n' + ok)
    assert "is not valid TOML" in error("trainers = [")


def test_study_file_is_checked_against_the_disk_before_anything_runs(tmp_path):
    """Issue 22, item 5 (and the study's part of item 1): folds a dataset does not have (nnU-Net
    would train them on a random 80:20 split), a missing converter source, an unknown dataset id,
    an id taken by another dataset, a mistyped converter option, an unknown trainer and an output
    folder inside an input are all refused at once, each naming its key, before any job runs."""
    from bus_nnunet.synthetic import write_nnunet_raw
    raw = tmp_path / "nn" / "raw"
    two_folds = write_nnunet_raw(raw, 982, "TwoFolds", n_cases=4)
    (two_folds / "splits_final.json").write_text(json.dumps([{"train": [], "val": []}] * 2))
    write_nnunet_raw(raw, 983, "NoSplits", n_cases=4)  # nnU-Net makes 5 folds for it
    write_nnunet_raw(raw, 985, "Other", n_cases=4)
    converted = write_nnunet_raw(raw, 986, "BUSI", n_cases=4)  # converted by an earlier run of the study
    (converted / "splits_final.json").write_text(json.dumps([{"train": [], "val": []}] * 2))
    (tmp_path / "busi_src").mkdir()
    body = ('trainers = ["nnUNetTrainer", "nnUNetTrainerUSS"]\nfolds = [0, 2, 5]\n'
            '[[datasets]]\nid = 981\nconverter = "busi"\nsource = "no_such_folder"\nconvert_args = ["--folds", "3"]\n'
            '[[datasets]]\nid = 982\n[[datasets]]\nid = 983\n[[datasets]]\nid = 999\n'
            '[[datasets]]\nid = 984\nconverter = "busi"\nsource = "busi_src"\nconvert_args = ["--fodls", "2"]\n'
            '[[datasets]]\nid = 985\nconverter = "busi"\nsource = "busi_src"\n'
            '[[datasets]]\nid = 986\nconverter = "busi"\nsource = "moved_away"\n')
    study = _study_file(tmp_path, body, output="busi_src/study")
    proc = _run(["study", "run", study], check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    after_header = proc.stderr.split("problems; nothing was run:\n", 1)[1]
    lines = [line.strip() for line in after_header.splitlines()]
    expected = [
        f"datasets[0].source: folder {tmp_path / 'no_such_folder'} does not exist",
        "folds: fold 5 does not exist in datasets[0] (Dataset981_BUSI): `bus-nnunet convert busi` writes folds 0-2",
        "folds: fold 2 does not exist in datasets[1] (Dataset982_TwoFolds): its "
        f"{two_folds / 'splits_final.json'} has folds 0-1",
        "folds: fold 5 does not exist in datasets[1] (Dataset982_TwoFolds)",
        "folds: fold 5 does not exist in datasets[2] (Dataset983_NoSplits): it has no splits_final.json, so nnU-Net "
        "makes folds 0-4",
        f"datasets[3].id: Dataset 999 is neither converted by this study (no converter/source) nor present in "
        f"nnUNet_raw ({raw})",
        "datasets[4].convert_args: unrecognized arguments: --fodls 2",
        "datasets[5].id: nnUNet_raw already has Dataset985_Other with id 985, but this study converts busi into "
        "Dataset985_BUSI",
        # converted already: its folds are on disk, and its source is no longer needed
        f"folds: fold 2 does not exist in datasets[6] (Dataset986_BUSI): its {converted / 'splits_final.json'} "
        f"has folds 0-1",
        "folds: fold 5 does not exist in datasets[6] (Dataset986_BUSI)",
        f"output: the study's output folder {tmp_path / 'busi_src' / 'study'} lies inside the input "
        f"{tmp_path / 'busi_src'}",
        "trainers: unknown trainer 'nnUNetTrainerUSS': did you mean nnUNetTrainerUS",
    ]
    assert len(lines) == len(expected), proc.stderr
    for line, start in zip(lines, expected):
        assert line.startswith(start), f"{line!r} does not start with {start!r}"
    assert f": {len(expected)} problems; nothing was run" in proc.stderr
    assert not (tmp_path / "busi_src" / "study").exists()  # nothing started, not even the logs folder


def test_plan_jobs_use_the_presets_planner(tmp_path):
    from bus_nnunet.study.config import load_study
    from bus_nnunet.study.run import StudyRun
    path = tmp_path / "s.toml"
    path.write_text('trainers = ["nnUNetTrainerUS"]\nplans = ["nnUNetPlans", "nnUNetResEncUNetLPlans"]\n'
                    '[schedule]\nbatch_size = 4\n[paths]\nnnUNet_raw = "r"\nnnUNet_preprocessed = "p"\n'
                    'nnUNet_results = "x"\n[[datasets]]\nid = 7\n')
    study = load_study(path)
    jobs = StudyRun(study).by_key()
    assert "ExperimentPlanner" in jobs["plan-7-nnUNetPlans"].cmd
    assert "nnUNetPlannerResEncL" in jobs["plan-7-nnUNetResEncUNetLPlans"].cmd
    assert jobs["plan-7-nnUNetResEncUNetLPlans"].after == ["plan-7-nnUNetPlans"]  # one fingerprint at a time
    assert "train-7-nnUNetResEncUNetLPlans_bs4-nnUNetTrainerUS-fold4" in jobs  # trains on the batch-4 copy


def test_example_study_file_is_valid():
    """The study file the README points to validates and names only trainers that exist."""
    from bus_nnunet.study.config import load_study
    from bus_nnunet.trainers import TRAINERS
    study = load_study(Path(__file__).resolve().parents[1] / "examples" / "study_breast.toml")
    assert study.executor.kind == "slurm" and "nnUNetResEncUNetMPlans" in study.plans
    assert set(study.trainers) <= {"nnUNetTrainer", *TRAINERS}


def test_status_asks_slurm_once_and_says_cancelled_blocked_or_failed(tmp_path, monkeypatch):
    """What SLURM says of each submitted job, from one squeue call for the whole study (a stand-in
    squeue answers as SLURM 22.05 does and counts its calls): CANCELLED is 'cancelled' (not a
    failure with exit -15), a pending array task scancel'd is gone from SLURM without a trace and
    is 'cancelled' too, a job SLURM holds for a dependency that can never be met is 'blocked', a
    node failure is 'failed', a requeued job is 'queued' -- and none of them is done without its
    outputs, whatever SLURM says."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "squeue_calls"
    (bin_dir / "squeue").write_text(
        f'#!/bin/sh\necho "$@" >> {calls}\n'
        'printf "100_0|CANCELLED|None\\n100_1|NODE_FAIL|None\\n100_3|PENDING|BeginTime\\n'
        '100_4|COMPLETED|None\\n101|PENDING|DependencyNeverSatisfied\\n"\n')
    (bin_dir / "squeue").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    study = _study_file(tmp_path, 'trainers = ["nnUNetTrainer"]\nfolds = [0, 1, 2, 3, 4]\n[[datasets]]\nid = 982\n',
                        executor='kind = "slurm"\n[executor.slurm]\ngpus_per_node = 0\n')
    from bus_nnunet.study.run import StudyRun
    run = StudyRun.load(study)
    jobs = run.by_key()
    submitted = {f"train-982-nnUNetPlans-nnUNetTrainer-fold{f}": f"100_{f}" for f in range(5)}
    submitted["report-982-nnUNetPlans"] = "101"
    for key, job_id in submitted.items():
        jobs[key].log.parent.mkdir(parents=True, exist_ok=True)
        jobs[key].slurm_file.write_text(f"{job_id} {tmp_path}/slurm/{job_id}.out\n")
    (jobs["train-982-nnUNetPlans-nnUNetTrainer-fold0"].rc_file).write_text("-15 100_0\n")  # SIGTERM by scancel
    (jobs["train-982-nnUNetPlans-nnUNetTrainer-fold4"].rc_file).write_text("0 100_4\n")  # outputs missing
    # the failed node left its run's pid file behind: SLURM's NODE_FAIL wins over it
    (jobs["train-982-nnUNetPlans-nnUNetTrainer-fold1"].pid_file).write_text("12345 lost-node\n")
    states = run.states()
    assert len(calls.read_text().splitlines()) == 1  # one SLURM call for the whole study
    assert "100_0,100_1,100_2,100_3,100_4,101" in calls.read_text()
    fold = {f: states[f"train-982-nnUNetPlans-nnUNetTrainer-fold{f}"] for f in range(5)}
    assert fold[0] == ("cancelled", "SLURM job 100_0 was cancelled")
    assert fold[1] == ("failed", "SLURM job 100_1 ended NODE_FAIL")
    assert fold[2] == ("cancelled", "SLURM job 100_2 left the queue without running")
    assert fold[3][0] == "queued" and fold[4][0] == "pending"  # COMPLETED without outputs is not done
    assert states["report-982-nnUNetPlans"][0] == "blocked"
    assert states["ensemble-982"] == ("pending", "")  # never submitted
    proc = _run(["study", "status", study], check=False)  # the stand-in squeue is on its PATH
    assert "train-982-nnUNetPlans-nnUNetTrainer-fold0: cancelled: SLURM job 100_0 was cancelled" in proc.stdout
    assert "train-982-nnUNetPlans-nnUNetTrainer-fold1 failed (SLURM job 100_1 ended NODE_FAIL)" in proc.stdout
    assert "1 blocked, 2 cancelled, 1 failed" in proc.stdout and proc.returncode == 1
    assert len(calls.read_text().splitlines()) == 2  # status: one more call, for every job at once


def test_a_new_executor_is_one_module_and_a_broken_one_is_named(tmp_path, monkeypatch):
    """A module dropped beside the executors registers a kind with its own options table: the study
    file validates against it (kind and [executor.<kind>]), a run calls it with the StudyRun and its
    jobs, and nothing else was edited; a module that fails to import is named with its error while
    every other executor stays available."""
    from bus_nnunet.study import config, executors
    extra = tmp_path / "plugins"
    extra.mkdir()
    (extra / "echo.py").write_text(
        "from pydantic import BaseModel, ConfigDict\n"
        "from bus_nnunet.study.executors import register_executor\n"
        "class EchoOptions(BaseModel):\n"
        "    model_config = ConfigDict(extra='forbid', frozen=True)\n"
        "    queue: str = 'default'\n"
        "@register_executor('echo', options=EchoOptions)\n"
        "class Echo:\n"
        "    def __call__(self, run, jobs):\n"
        "        return {j.key: f'{run.study.executor.echo.queue}:{j.cmd[0]}' for j in jobs}\n")
    (extra / "broken.py").write_text("import no_such_scheduler_library\n")
    monkeypatch.setattr(executors, "__path__", [*executors.__path__, str(extra)])
    monkeypatch.setattr(executors, "_loaded", False)
    monkeypatch.setattr(executors, "_REGISTRY", dict(executors._REGISTRY))
    monkeypatch.setattr(executors, "UNAVAILABLE", {})
    config._study_model.cache_clear()
    try:
        assert {"echo", "local", "slurm", "submitit-local", "submitit-debug"} <= set(executors.executor_kinds())
        assert executors.UNAVAILABLE == {
            "bus_nnunet.study.executors.broken": "ModuleNotFoundError: No module named 'no_such_scheduler_library'"}
        study = _study_file(tmp_path, 'trainers = ["nnUNetTrainer"]\nfolds = [0]\n[[datasets]]\nid = 982\n',
                            executor='kind = "echo"\n[executor.echo]\nqueue = "night"\n')
        from bus_nnunet.study.run import StudyRun
        run = StudyRun.load(study)
        outcome = run.executor()(run, run.jobs)
        assert outcome["train-982-nnUNetPlans-nnUNetTrainer-fold0"].startswith("night:")
        bad = tmp_path / "bad.toml"
        bad.write_text(study.read_text().replace('kind = "echo"', 'kind = "ecko"'))
        with pytest.raises(UserError, match=r"executor.kind: unknown executor 'ecko': did you mean echo\? .*"
                                            r"bus_nnunet.study.executors.broken is unavailable \(ModuleNotFoundError"):
            config.load_study(bad)
        bad.write_text(study.read_text().replace('queue = "night"', 'queu = "night"'))
        with pytest.raises(UserError, match=r"executor.echo.queu: unknown key"):
            config.load_study(bad)
    finally:
        config._study_model.cache_clear()
