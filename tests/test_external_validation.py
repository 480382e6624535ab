"""External validation in ``bus-nnunet study`` (issue 23 part 3).

Without training: the synthetic second 'hospital', which pairs a study file asks for, the
refusals (labels, spacing), which images are tested, per-image resumability.  With one small
trained study (hospital A: 2 trainers x 2 folds, 30 iterations; hospital B: the same generator
through another scanner, only tested on): the domain shift (the matrix has the cross-validation
on its diagonal and every trainer's external Dice is lower), the ensemble's mean of
probabilities, the heatmap in summary.html (rendered in headless chromium), and an external job
SIGKILLed mid-way that the rerun finishes without recomputing an image."""
import json
import types

import numpy as np
import pytest

from bus_nnunet.errors import UserError


def test_default_acquisition_renders_what_it_always_did_and_another_shifts_only_the_image():
    from bus_nnunet.synthetic import Acquisition, make_case
    hospital_b = Acquisition(gain=1.6, speckle=2.5, attenuation=4.0, gamma=0.5)
    a, a_masks = make_case(np.random.default_rng(5), (64, 64), "malignant")
    same, _ = make_case(np.random.default_rng(5), (64, 64), "malignant", acquisition=Acquisition())
    b, b_masks = make_case(np.random.default_rng(5), (64, 64), "malignant", acquisition=hospital_b)
    assert np.array_equal(a, same)  # the demo's and the tests' images are unchanged
    assert all(np.array_equal(m, n) for m, n in zip(a_masks, b_masks))  # same anatomy, other scanner
    lesion = a_masks[0]
    contrast = lambda img: float(img[~lesion].mean() - img[lesion].mean())  # noqa: E731
    assert np.abs(a.astype(int) - b.astype(int)).mean() > 10 and contrast(b) < contrast(a)


def _layout(tmp_path, configuration="2d"):
    """What the external-validation functions read of a study's Layout."""
    raw, pre = tmp_path / "raw", tmp_path / "pre"

    def dataset_name(dataset_id):
        found = sorted(raw.glob(f"Dataset{dataset_id:03d}_*"))
        return found[0].name if found else None
    return types.SimpleNamespace(raw=raw, preprocessed=pre, output=tmp_path / "out", dataset_name=dataset_name,
                                 study=types.SimpleNamespace(configuration=configuration))


def _raw(tmp_path, dataset_id, name, n_cases=3, n_test=0, **dataset_json):
    from bus_nnunet.synthetic import write_nnunet_raw
    folder = write_nnunet_raw(tmp_path / "raw", dataset_id, name, n_cases=n_cases, n_test=n_test, size=(32, 32))
    if dataset_json:
        data = json.loads((folder / "dataset.json").read_text())
        (folder / "dataset.json").write_text(json.dumps({**data, **dataset_json}))
    return folder


def test_pairs_of_a_study_file():
    from bus_nnunet.study.external_validation import ENSEMBLE, external_models, external_pairs

    def study(external, train_flags=(True, True, False)):
        datasets = [types.SimpleNamespace(id=i, train=t) for i, t in zip((601, 602, 603), train_flags)]
        return types.SimpleNamespace(datasets=datasets, external=external, trainers=["A", "B"], ensemble_best_k=3)
    assert external_pairs(study(None)) == []
    # "all": every trained dataset on every other dataset of the study, test-only ones included
    assert external_pairs(study("all")) == [(601, 602), (601, 603), (602, 601), (602, 603)]
    assert external_pairs(study({"601": [603]})) == [(601, 603)]
    assert external_pairs(study({"602": "all"})) == [(602, 601), (602, 603)]
    assert external_models(study(None)) == ["A", "B", ENSEMBLE]


def test_test_images_are_the_test_split_where_there_is_one(tmp_path):
    from bus_nnunet.study.external_validation import external_images
    layout = _layout(tmp_path)
    _raw(tmp_path, 601, "WithTest", n_cases=4, n_test=2)
    _raw(tmp_path, 602, "NoTest", n_cases=3)
    with_test, without = external_images(layout, 601), external_images(layout, 602)
    assert with_test.split == "imagesTs" and sorted(with_test.images) == ["withtest_0004", "withtest_0005"]
    assert with_test.labels.name == "labelsTs"
    assert without.split == "imagesTr" and len(without.images) == 3 and without.labels.name == "labelsTr"
    with pytest.raises(UserError, match="Dataset 603 is not in nnUNet_raw"):
        external_images(layout, 603)


def test_label_and_spacing_mismatches_are_refused_naming_both_datasets(tmp_path):
    from bus_nnunet.study.external_validation import pair_problems
    layout = _layout(tmp_path)
    _raw(tmp_path, 601, "Breast")
    _raw(tmp_path, 602, "Thyroid")
    _raw(tmp_path, 603, "TwoLabels", labels={"background": 0, "benign": 1, "malignant": 2})
    _raw(tmp_path, 604, "Volumes", file_ending=".nii.gz")
    assert pair_problems(layout, 601, 602, "nnUNetPlans") == []
    [labels] = pair_problems(layout, 601, 603, "nnUNetPlans")
    assert "Dataset601_Breast -> Dataset603_TwoLabels: the label values differ" in labels
    [spacing] = pair_problems(layout, 601, 604, "nnUNetPlans")
    assert "Dataset604_Volumes stores .nii.gz images with a physical pixel spacing" in spacing
    assert "Dataset601_Breast read natural 2D images (1 px spacing)" in spacing and "refused" in spacing
    # a model trained at a physical spacing (not 1 px) is refused on natural images too
    plans = tmp_path / "pre" / "Dataset602_Thyroid" / "nnUNetPlans.json"
    plans.parent.mkdir(parents=True)
    plans.write_text(json.dumps({"configurations": {"2d": {"spacing": [0.1, 0.1]}}}))
    [trained] = pair_problems(layout, 602, 601, "nnUNetPlans")
    assert "models of Dataset602_Thyroid were trained at pixel spacing [0.1, 0.1]" in trained


def test_an_interrupted_job_keeps_its_images_and_other_inputs_start_over(tmp_path):
    from bus_nnunet.study.external_validation import _save_mask, _start
    folder = tmp_path / "job"
    inputs = {"checkpoints": {"T/fold_0": [10, 1]}}
    _start(folder, inputs)
    _save_mask(folder / "masks" / "a.png", np.ones((4, 4), np.uint8))
    kept = (folder / "masks" / "a.png").stat().st_mtime_ns
    _start(folder, inputs)  # the rerun of a killed job: the image stays as it was
    assert (folder / "masks" / "a.png").stat().st_mtime_ns == kept
    assert [p.name for p in (folder / "masks").iterdir()] == ["a.png"]  # no temporary files left behind
    _start(folder, {"checkpoints": {"T/fold_0": [11, 2]}})  # a retrained fold: computed again
    assert not (folder / "masks" / "a.png").exists()



def test_study_file_keys_and_the_jobs_they_make(tmp_path):
    from bus_nnunet.study import jobs as J
    from bus_nnunet.study.config import load_study
    from bus_nnunet.study.run import StudyRun

    def study(text):
        path = tmp_path / "s.toml"
        path.write_text('trainers = ["A_Trainer", "B_Trainer"]\nfolds = [0, 1]\n' + text +
                        '\n[paths]\nnnUNet_raw = "r"\nnnUNet_preprocessed = "p"\nnnUNet_results = "x"\n'
                        '[[datasets]]\nid = 601\n[[datasets]]\nid = 602\n[[datasets]]\nid = 603\n'
                        'converter = "stu"\nsource = "stu"\ntrain = false\n')
        return load_study(path)

    def error(text):
        with pytest.raises(UserError) as e:
            study(text)
        return str(e.value)

    s = study('ensemble_best_k = 2\nhd95 = "max"\n[external]\n601 = [603, 602]\n602 = "all"\n')
    jobs = StudyRun(s).by_key()
    assert not any(k.startswith(("plan-603", "train-603", "report-603")) for k in jobs)  # only tested on
    assert "convert-603" in jobs and "--hd95" in jobs["report-601-nnUNetPlans"].cmd
    external = [k for k in jobs if jobs[k].stage == "external"]
    assert external[:3] == ["external-601-603-nnUNetPlans-A_Trainer", "external-601-603-nnUNetPlans-B_Trainer",
                            "external-601-603-nnUNetPlans-ensemble"]
    assert len(external) == 4 * 3  # 601 -> 603, 602; 602 -> 601, 603; two trainers and the ensemble each
    trainer_job = jobs["external-601-603-nnUNetPlans-B_Trainer"]
    assert sorted(trainer_job.after) == ["convert-603", "train-601-nnUNetPlans-B_Trainer-fold0",
                                         "train-601-nnUNetPlans-B_Trainer-fold1"]
    assert sorted(jobs["external-601-603-nnUNetPlans-ensemble"].after) == [
        "external-601-603-nnUNetPlans-A_Trainer", "external-601-603-nnUNetPlans-B_Trainer", "report-601-nnUNetPlans"]
    assert set(external) <= set(jobs["summary"].after)
    assert J.STAGES.index("report") < J.STAGES.index("external") < J.STAGES.index("summary")
    assert "external.604: 604 is not a dataset id of the study" in error("[external]\n604 = [601]\n")
    assert "external.603: dataset 603 has train = false" in error("[external]\n603 = [601]\n")
    assert "external.601: 9 is not a dataset id" in error("[external]\n601 = [9]\n")
    assert "external.601: a dataset is not its own external test" in error("[external]\n601 = [601, 603]\n")
    assert "datasets[2]: train = false, but no [external] entry tests on dataset 603" in \
        error("[external]\n601 = [602]\n")
    assert 'external: give "all"' in error('external = "al"\n')
    assert "hd95: Input should be 'pooled' or 'max'" in error('hd95 = "mean"\n[external]\n601 = [603]\n')


# -- a trained study: hospital A trained, hospital B (another scanner) only tested on -------------------
HOSPITALS = """
name = "hospitals"
output = "out"
trainers = ["nnUNetTrainer", "nnUNetTrainerUS"]
folds = [0, 1]
ensemble_best_k = 2

[external]
971 = [972]

[[datasets]]
id = 971

[[datasets]]
id = 972
train = false

[paths]
nnUNet_raw = "nn/raw"
nnUNet_preprocessed = "nn/pre"
nnUNet_results = "nn/res"

[schedule]        # 30 iterations: in-domain Dice ~0.9 at 64 px (the demo's --quick learns in as many)
epochs = 2
iterations_per_epoch = 15
val_iterations = 1

[executor]
kind = "local"
gpus = 0
processes = 2
augmentation_workers = 0
"""
#: hospital B: the same anatomy generator, another scanner (grainier, deeper attenuation, lifted darks)
HOSPITAL_B = dict(gain=1.6, speckle=2.5, attenuation=4.0, gamma=0.5)
KILLED = "external-971-972-nnUNetPlans-nnUNetTrainerUS"


def _cli(args, **kw):
    import os
    import subprocess
    from bus_nnunet import tool_runner
    env = {k: v for k, v in os.environ.items() if not k.startswith("nnUNet_")} | {"OMP_NUM_THREADS": "2"}
    return subprocess.run([tool_runner.tool("bus-nnunet"), *map(str, args)], env=env, capture_output=True, text=True,
                          timeout=1800, **kw)


@pytest.fixture(scope="module")
def hospitals(tmp_path_factory):
    """The study run once with the external prediction job of nnUNetTrainerUS SIGKILLed after
    some of its images, then rerun to the end."""
    import os
    import signal
    import subprocess
    import time
    from bus_nnunet import tool_runner
    from bus_nnunet.synthetic import Acquisition, write_nnunet_raw
    root = tmp_path_factory.mktemp("hospitals")
    write_nnunet_raw(root / "nn" / "raw", 971, "HospitalA", n_cases=16, size=(64, 64), seed=1)
    write_nnunet_raw(root / "nn" / "raw", 972, "HospitalB", n_cases=10, size=(64, 64), seed=2,
                     acquisition=Acquisition(**HOSPITAL_B))
    for sub in ("pre", "res"):
        (root / "nn" / sub).mkdir()
    study = root / "hospitals.toml"
    study.write_text(HOSPITALS)
    out = root / "out"
    masks = out / "external" / "971_to_972" / "nnUNetPlans" / "nnUNetTrainerUS" / "masks"
    pid_file = out / "logs" / f"{KILLED}.pid"
    env = {k: v for k, v in os.environ.items() if not k.startswith("nnUNet_")} | {"OMP_NUM_THREADS": "2"}
    proc = subprocess.Popen([tool_runner.tool("bus-nnunet"), "study", "run", str(study)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 1800

    def finished_cases():  # a case is done once its mask is there (not its '.'-named temporary file)
        return sorted(p.stem for p in masks.glob("*.png") if not p.name.startswith(".")) if masks.is_dir() else []
    while proc.poll() is None and time.time() < deadline and not (pid_file.is_file() and finished_cases()):
        time.sleep(0.02)
    assert pid_file.is_file(), "the external job to kill never started"
    os.kill(int(pid_file.read_text().split()[0]), signal.SIGKILL)
    done_at_kill = finished_cases()
    first_out, _ = proc.communicate(timeout=1800)
    # every file of a case its job finished (mask and probabilities; a case killed between the two is redone)
    written = {p: p.stat().st_mtime_ns for p in (out / "external").rglob("*")
               if p.is_file() and p.suffix in (".png", ".npz")
               and (p.parent.parent / "masks" / f"{p.stem}.png").is_file()}
    rerun = _cli(["study", "run", study])
    assert rerun.returncode == 0, rerun.stdout[-4000:] + rerun.stderr[-4000:]
    return {"root": root, "study": study, "out": out, "first_out": first_out, "done_at_kill": done_at_kill,
            "written_before_rerun": written, "rerun": rerun.stdout}


def test_killed_external_job_is_finished_by_the_rerun_without_recomputing(hospitals):
    first = hospitals["first_out"]
    assert f"{KILLED}: FAILED (exit status -9)" in first
    assert "external-971-972-nnUNetPlans-ensemble: skipped" in first  # it needs the killed job
    assert "external-971-972-nnUNetPlans-nnUNetTrainer: done" in first
    assert 0 < len(hospitals["done_at_kill"]) < 10, "the kill did not land mid-way"
    ran = [line.split("]")[1].split(":")[0].strip() for line in hospitals["rerun"].splitlines()
           if line.startswith("[")]
    assert sorted(ran) == sorted([KILLED, "external-971-972-nnUNetPlans-ensemble", "summary"])
    for path, mtime in hospitals["written_before_rerun"].items():
        assert path.stat().st_mtime_ns == mtime, f"{path} was computed again"
    masks = hospitals["out"] / "external" / "971_to_972" / "nnUNetPlans" / "nnUNetTrainerUS" / "masks"
    assert len(list(masks.glob("*.png"))) == 10
    status = _cli(["study", "status", hospitals["study"]]).stdout
    assert "failed" not in status and "pending" not in status


def test_matrix_has_cross_validation_on_the_diagonal_and_external_dice_drops(hospitals):
    out = hospitals["out"]
    cv = json.loads((out / "cv_report" / "Dataset971" / "nnUNetPlans" / "metrics.json").read_text())
    md = (out / "summary.md").read_text()
    for trainer in ("nnUNetTrainer", "nnUNetTrainerUS"):
        in_domain = cv["trainers"][trainer]["all_cases"]["per_image"]["dice"]
        external = json.loads((out / "external" / "971_to_972" / "nnUNetPlans" / trainer / "metrics.json")
                              .read_text())["summary"]["per_image"]["dice"]
        # the table row of this model: trained on hospital A, its CV on the diagonal, hospital B beside it
        row = f"| Dataset971_HospitalA | {in_domain['mean']:.3f} ± {in_domain['std']:.3f} (CV) | " \
              f"{external['mean']:.3f} ± {external['std']:.3f} |"
        assert f"Train x test Dice of {trainer} (nnUNetPlans)" in md and row in md
        assert in_domain["mean"] > 0.6, f"{trainer} did not learn hospital A (Dice {in_domain['mean']:.3f})"
        assert external["mean"] < in_domain["mean"] - 0.1, f"{trainer}: no drop on hospital B"
    ensemble = json.loads((out / "external" / "971_to_972" / "nnUNetPlans" / "ensemble" / "metrics.json").read_text())
    assert ensemble["inputs"]["members"] and ensemble["n_images"] == 10
    assert "Paired Dice tests on Dataset972_HospitalB of the models trained on Dataset971_HospitalA" in md
    assert "Worst cases on Dataset972_HospitalB of ensemble" in md


def test_ensemble_is_the_mean_of_its_members_probabilities(hospitals):
    from PIL import Image
    pair = hospitals["out"] / "external" / "971_to_972" / "nnUNetPlans"
    members = json.loads((pair / "ensemble" / "metrics.json").read_text())["inputs"]["members"]
    for mask in sorted((pair / "ensemble" / "masks").glob("*.png"))[:3]:
        probabilities = [np.load(pair / m / "probabilities" / f"{mask.stem}.npz")["probabilities"] for m in members]
        expected = np.argmax(np.mean(probabilities, axis=0), axis=0)[0]
        assert np.array_equal(np.asarray(Image.open(mask)), expected)


def test_heatmap_is_in_the_summary_page(hospitals):
    from matplotlib import colormaps

    from _browser import screenshot_pixels
    from bus_nnunet.study.summary import EXTERNAL_CMAP
    out = hospitals["out"]
    page = (out / "summary.html").read_text()
    assert 'alt="external_nnUNetPlans"' in page and "src=\"http" not in page
    pixels = screenshot_pixels(out / "summary.html", out / "screenshot_external.png", (1000, 6000)).astype(int)
    cv = json.loads((out / "cv_report" / "Dataset971" / "nnUNetPlans" / "metrics.json").read_text())
    diagonal = cv["trainers"]["nnUNetTrainer"]["all_cases"]["per_image"]["dice"]["mean"]
    colour = np.round(np.asarray(colormaps[EXTERNAL_CMAP](diagonal)[:3]) * 255).astype(int)
    cell = (np.abs(pixels - colour) <= 3).all(1).sum()
    assert cell > 500, f"the heatmap's diagonal cell ({colour}) was not rendered ({cell} pixels)"


def test_a_retrained_fold_makes_its_external_tests_stale(hospitals):
    """Issue 25 part 3: the external scores record the checkpoints they were computed from, as the
    study's other jobs that use models do: a fold trained again makes its trainer's external test,
    the ensemble's (a member) and the summary stale, with the fold named; the same checkpoint back
    as it was, they are done again (nothing was recomputed in between)."""
    import os
    import time
    from bus_nnunet.study.run import StudyRun
    checkpoint = hospitals["root"] / "nn" / "res" / "Dataset971_HospitalA" / "nnUNetTrainer__nnUNetPlans__2d" / \
        "fold_0" / "checkpoint_final.pth"
    before = checkpoint.stat()
    os.utime(checkpoint, ns=(time.time_ns(), time.time_ns()))  # what a retraining leaves
    try:
        states = StudyRun.load(hospitals["study"]).states()
        assert states["external-971-972-nnUNetPlans-nnUNetTrainer"] == (
            "stale", "nnUNetTrainer fold 0 trained after this external test")
        members = json.loads((hospitals["out"] / "external" / "971_to_972" / "nnUNetPlans" / "ensemble" /
                              "metrics.json").read_text())["inputs"]["members"]
        assert states["external-971-972-nnUNetPlans-ensemble"][0] == ("stale" if "nnUNetTrainer" in members
                                                                     else "done")
        assert states["external-971-972-nnUNetPlans-nnUNetTrainerUS"][0] == "done"
        assert states["summary"][0] == "stale" and states["report-971-nnUNetPlans"][0] == "stale"
    finally:
        os.utime(checkpoint, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert {s for s, _ in StudyRun.load(hospitals["study"]).states().values()} == {"done"}
