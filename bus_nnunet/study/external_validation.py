"""External validation: models trained on one dataset of a study tested on another dataset's images.

The study file names, per training dataset, the datasets it is tested on (``[external]``, see
:mod:`bus_nnunet.study.config`).  For each such pair and plans there is one study job per model:

* each trainer's fold ensemble (every study fold), run by ``predict``: nnU-Net's predictor
  (:func:`bus_nnunet.inference.segmentation.load_predictor`) on every test image read as ``bus-nnunet predict``
  reads it (:func:`bus_nnunet.inference.images.read_for_model`: grey <-> RGB converted to what the model
  was trained on);
* the study's ensemble, run by ``ensemble``: the mean of the softmax probabilities its members
  saved (the ``ensemble_best_k`` trainers with the best cross-validation Dice in that dataset's
  cv-report), turned into labels by nnU-Net's label manager -- no network runs again.

Test images are the test dataset's ``imagesTs`` (with ``labelsTs``) where it has an official
or held-out test split, else all its ``imagesTr``.  Each job writes into
``<output>/external/<train>_to_<test>/<plans>/<model>/``::

    masks/<case>.png            label map (written last for a case: its presence = case done)
    probabilities/<case>.npz    softmax, nnU-Net's layout (``probabilities``, C x 1 x H x W); trainers only
    inputs.json                 what the outputs are computed from (fold checkpoints: size, mtime; the
                                record of every study job that uses models, :mod:`bus_nnunet.study.inputs`)
    per_case.csv, metrics.json  once every image is scored, as cv-report scores (metrics.json = done)

A killed job's rerun predicts only the images without a mask (each file is written atomically);
a retrained fold changes ``inputs.json``'s record, so the job is pending again and starts over.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from bus_nnunet.errors import UserError
from bus_nnunet.study.inputs import checkpoint_record, stale_reason

#: the model name of the study's ensemble (trainer names are class names, never this)
ENSEMBLE = "ensemble"
#: image files without a physical spacing: nnU-Net's NaturalImage2DIO reads them at 1 px
NATURAL_IMAGE_ENDINGS = (".png", ".bmp", ".jpg", ".jpeg", ".tif", ".tiff")
#: the empty-mask rule and metrics of cv-report (the study's cv-report jobs use its defaults)
COMPARED_METRICS = ("dice",)


# -- what a study tests ----------------------------------------------------------------------------
def trained_datasets(study) -> List[int]:
    """Ids of the datasets the study trains on (``train = false`` ones are only tested on)."""
    return [d.id for d in study.datasets if getattr(d, "train", True)]


def external_pairs(study) -> List[Tuple[int, int]]:
    """(training dataset id, test dataset id) of every external test the study file asks for,
    in the order of its datasets.  ``external = "all"``: every trained dataset on every other
    dataset; ``[external] 601 = [602, 603]`` or ``601 = "all"`` per training dataset."""
    spec = getattr(study, "external", None)
    if not spec:
        return []
    ids = [d.id for d in study.datasets]
    targets: Dict[int, List[int]] = {}
    for train in trained_datasets(study):
        chosen = spec if spec == "all" else spec.get(str(train), spec.get(train, []))
        targets[train] = [i for i in ids if i != train] if chosen == "all" else [int(i) for i in chosen]
    return [(train, test) for train in trained_datasets(study) for test in targets[train]]


def external_models(study) -> List[str]:
    """The models each pair is tested with: every trainer, then the study's ensemble (with two
    trainers or more)."""
    return [*study.trainers, *([ENSEMBLE] if ensemble_selection(study) else [])]


def prediction_folds(study) -> List[str]:
    """The folds of a trainer's fold ensemble: the study's cross-validation folds (``all`` only
    when the study trains nothing else)."""
    numbered = [str(f) for f in study.folds if f != "all"]
    return numbered or ["all"]


def pair_folder(layout, train_id: int, test_id: int, plans: str, model: str) -> Path:
    return layout.output / "external" / f"{train_id}_to_{test_id}" / plans / model


# -- the test dataset ------------------------------------------------------------------------------
@dataclass(frozen=True)
class ExternalImages:
    name: str                 # DatasetNNN_Name
    split: str                # "imagesTs" or "imagesTr"
    images: Dict[str, Path]   # case id -> its <case>_0000 image
    labels: Path              # labelsTs / labelsTr
    manifest: Path


def _raw_dataset(layout, dataset_id: int) -> Path:
    name = layout.dataset_name(dataset_id)
    folder = layout.raw / name if name else None
    if folder is None or not (folder / "dataset.json").is_file():
        raise UserError(f"Dataset {dataset_id:03d} is not in nnUNet_raw ({layout.raw}) yet: convert it first")
    return folder


def external_images(layout, dataset_id: int) -> ExternalImages:
    """The images a dataset is tested on: its ``imagesTs`` where it has a test split, else all of
    ``imagesTr``; each with its reference in the matching labels folder."""
    from bus_nnunet.inference.images import NNUNET_CHANNEL_SUFFIX
    folder = _raw_dataset(layout, dataset_id)
    ending = json.loads((folder / "dataset.json").read_text()).get("file_ending", ".png")
    for split, labels in (("imagesTs", "labelsTs"), ("imagesTr", "labelsTr")):
        images = {p.name[:-len(NNUNET_CHANNEL_SUFFIX + ending)]: p
                  for p in sorted((folder / split).glob(f"*{NNUNET_CHANNEL_SUFFIX}{ending}"))} \
            if (folder / split).is_dir() else {}
        if not images:
            continue
        if not (folder / labels).is_dir():
            raise UserError(f"{folder.name} has {split} but no {labels}: its test images cannot be scored")
        return ExternalImages(folder.name, split, images, folder / labels, folder / "manifest.csv")
    raise UserError(f"{folder.name} has no images ({NNUNET_CHANNEL_SUFFIX}{ending}) in imagesTs or imagesTr")


def pair_problems(layout, train_id: int, test_id: int, plans: str) -> List[str]:
    """Why models of ``train_id`` cannot be tested on ``test_id`` (empty: they can): their label
    values differ, or one of them has a physical pixel spacing (the other 1 px natural images)."""
    train_raw, test_raw = _raw_dataset(layout, train_id), _raw_dataset(layout, test_id)
    train_json = json.loads((train_raw / "dataset.json").read_text())
    test_json = json.loads((test_raw / "dataset.json").read_text())
    found = []
    if train_json.get("labels") != test_json.get("labels"):
        found.append(f"{train_raw.name} -> {test_raw.name}: the label values differ ({train_json.get('labels')} vs "
                     f"{test_json.get('labels')}); external validation needs the same labels (lesion = 1)")
    ending = test_json.get("file_ending", ".png")
    if ending.lower() not in NATURAL_IMAGE_ENDINGS:
        found.append(f"{train_raw.name} -> {test_raw.name}: {test_raw.name} stores {ending} images with a physical "
                     f"pixel spacing, but the models of {train_raw.name} read natural 2D images (1 px spacing); "
                     f"a spacing mismatch is refused, not resampled")
    plans_file = layout.preprocessed / train_raw.name / f"{plans}.json"
    if plans_file.is_file():
        configuration = json.loads(plans_file.read_text())["configurations"].get(layout.study.configuration, {})
        spacing = [float(s) for s in configuration.get("spacing", [1.0, 1.0])][-2:]
        if spacing != [1.0, 1.0]:
            found.append(f"{train_raw.name} -> {test_raw.name}: the models of {train_raw.name} were trained at pixel "
                         f"spacing {spacing}, but {test_raw.name}'s images are natural 2D images (1 px spacing); "
                         f"a spacing mismatch is refused, not resampled")
    return found


# -- what a job's outputs are computed from ----------------------------------------------------------
def cv_ranking(study, layout, train_id: int, plans: str) -> List[Tuple[str, float]]:
    """(trainer, mean per-image cross-validation Dice) from the dataset's cv-report, best first
    (ties in the study's trainer order); empty before the cv-report exists."""
    from bus_nnunet.evaluation.cross_validation_report import read_cross_validation_report
    report = read_cross_validation_report(layout.cv_report(train_id, plans), missing_ok=True)
    if report is None:
        return []
    scored = []
    for trainer in study.trainers:
        dice = report.per_image(trainer, "dice") or {}
        if dice.get("mean") is not None:
            scored.append((trainer, float(dice["mean"])))
    return sorted(scored, key=lambda t: -t[1])


def ensemble_selection(study) -> Optional[str]:
    """cv-report's ``--ensembles`` selection of the study's ensemble (``best<k>``, k at most the
    number of trainers), or None for a study of one trainer (no ensemble)."""
    k = min(getattr(study, "ensemble_best_k", 3), len(study.trainers))
    return f"best{k}" if k >= 2 else None


def ensemble_members(study, layout, train_id: int, plans: str) -> List[str]:
    """The study's ensemble on ``train_id``: the members cv-report chose for its ``best<k>`` row
    (empty before the cv-report exists); for a report without ensemble rows, the same rule."""
    from bus_nnunet.evaluation.cross_validation_report import read_cross_validation_report
    selection = ensemble_selection(study)
    report = read_cross_validation_report(layout.cv_report(train_id, plans), missing_ok=True)
    if selection is None or report is None:
        return []
    name = report.ensemble_of(selection)
    if name:
        return list(report.ensembles[name]["members"])
    best = {t for t, _ in cv_ranking(study, layout, train_id, plans)[:int(selection[len("best"):])]}
    return [t for t in study.trainers if t in best]  # in the trainers' order, as cv-report lists members


def expected_inputs(run, train_id: int, test_id: int, plans: str, model: str) -> Dict[str, object]:
    """What the outputs of this job of a :class:`bus_nnunet.study.run.StudyRun` must be computed from, now."""
    study, layout = run.study, run.layout
    folds = prediction_folds(study)
    members = ensemble_members(study, layout, train_id, plans) if model == ENSEMBLE else [model]
    # the record every study job that uses trained models keeps (bus_nnunet.study.inputs)
    checkpoints = checkpoint_record(layout, train_id, [plans], members, folds)
    return {"train": train_id, "test": test_id, "plans": plans, "model": model, "members": members,
            "folds": folds, "checkpoints": checkpoints, "hd95": getattr(study, "hd95", None)}


def outputs_state(run, train_id: int, test_id: int, plans: str, model: str) -> Tuple[bool, Optional[str]]:
    """(done, stale reason): metrics.json is there and was computed from the checkpoints (and
    members) there now; else why its scores are out of date (None: not computed yet)."""
    metrics = pair_folder(run.layout, train_id, test_id, plans, model) / "metrics.json"
    if not metrics.is_file():
        return False, None
    try:
        recorded = json.loads(metrics.read_text()).get("inputs") or {}
    except ValueError:
        return False, None
    expected = expected_inputs(run, train_id, test_id, plans, model)
    if not expected["members"]:
        return False, None
    if recorded == expected:
        return True, None
    why = stale_reason(recorded.get("checkpoints") or {}, expected["checkpoints"], "external test")
    if why is None and recorded.get("members") != expected["members"]:
        why = f"the ensemble's members are {' + '.join(expected['members'])} now"
    return False, why or "computed with other settings (folds, HD95) than the study's"


def is_done(run, train_id: int, test_id: int, plans: str, model: str) -> bool:
    """metrics.json is there and was computed from the checkpoints (and members) there now."""
    return outputs_state(run, train_id, test_id, plans, model)[0]


def _start(folder: Path, inputs: Dict[str, object]) -> None:
    """Keep the per-image outputs of an interrupted run of this same job; anything computed from
    other inputs (a retrained fold, other members) is removed first."""
    from bus_nnunet.io_utils import atomic_write_json
    record = folder / "inputs.json"
    previous = json.loads(record.read_text()) if record.is_file() else None
    if previous != inputs:
        for sub in ("masks", "probabilities"):
            for f in (folder / sub).glob("*") if (folder / sub).is_dir() else []:
                f.unlink()
        for f in ("metrics.json", "per_case.csv"):
            (folder / f).unlink(missing_ok=True)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(record, inputs)


def _save_mask(path: Path, segmentation: np.ndarray) -> None:
    from PIL import Image
    from bus_nnunet.io_utils import atomic_write
    # hidden temporary name: the scoring's file listing skips it
    atomic_write(path, lambda tmp: Image.fromarray(np.asarray(segmentation, np.uint8)).save(tmp, format="PNG"))


def _save_probabilities(path: Path, probabilities: np.ndarray) -> None:
    from bus_nnunet.io_utils import atomic_write

    def write(tmp: Path):
        with open(tmp, "wb") as f:  # a file object: numpy would append .npz to a name
            np.savez_compressed(f, probabilities=probabilities)
    atomic_write(path, write)


# -- the jobs --------------------------------------------------------------------------------------
def _require_pair(layout, train_id: int, test_id: int, plans: str) -> None:
    problems = pair_problems(layout, train_id, test_id, plans)
    if problems:
        raise UserError("; ".join(problems))


def predict_pair(run, train_id: int, test_id: int, plans: str, trainer: str, device: str = "cpu",
                 log=print) -> Path:
    """A trainer's fold ensemble on every test image without a mask yet, then the scores."""
    study, layout = run.study, run.layout
    from bus_nnunet.inference import images as U
    from bus_nnunet.inference.segmentation import load_ensemble
    _require_pair(layout, train_id, test_id, plans)
    tests = external_images(layout, test_id)
    folder = pair_folder(layout, train_id, test_id, plans, trainer)
    inputs = expected_inputs(run, train_id, test_id, plans, trainer)
    _start(folder, inputs)
    todo = [c for c in tests.images if not (folder / "masks" / f"{c}.png").is_file()]
    log(f"{trainer} ({layout.dataset_name(train_id)}, {plans}, folds {', '.join(inputs['folds'])}) on "
        f"{tests.name} {tests.split}: {len(tests.images)} image(s), {len(tests.images) - len(todo)} already done")
    if todo:
        # `bus-nnunet predict`'s model: one model folder, nnU-Net's predictor over the study's folds
        model = load_ensemble(layout.model_folder(train_id, trainer, plans), folds=inputs["folds"], device=device)
        for i, case in enumerate(todo, 1):
            data = U.read_for_model(tests.images[case], model.rgb)  # grey <-> RGB as `bus-nnunet predict` converts
            prediction = model.predict(data)
            # the probabilities first: a case counts as done once its mask is there
            _save_probabilities(folder / "probabilities" / f"{case}.npz", prediction.probabilities)
            _save_mask(folder / "masks" / f"{case}.png", prediction.segmentation)
            log(f"[{i}/{len(todo)}] {case}")
    return score(study, folder, tests, inputs)


def member_probabilities(layout, train_id: int, test_id: int, plans: str, members: List[str], case: str):
    """Each member's saved softmax of ``case`` (C x 1 x H x W), read one at a time."""
    for trainer in members:
        with np.load(pair_folder(layout, train_id, test_id, plans, trainer) / "probabilities" / f"{case}.npz") as f:
            yield np.asarray(f["probabilities"], np.float32)


def ensemble_pair(run, train_id: int, test_id: int, plans: str, log=print) -> Path:
    """The mean of the members' saved probabilities on every test image (the rule of
    ``bus-nnunet predict -m A -m B``: :func:`bus_nnunet.inference.segmentation.average_probabilities`), labelled
    by nnU-Net's label manager of the first member's plans, then the scores."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from bus_nnunet.inference.segmentation import average_probabilities
    study, layout = run.study, run.layout
    _require_pair(layout, train_id, test_id, plans)
    tests = external_images(layout, test_id)
    inputs = expected_inputs(run, train_id, test_id, plans, ENSEMBLE)
    members = inputs["members"]
    if not members:
        raise UserError(f"no cross-validation report for {layout.dataset_name(train_id)} {plans} "
                        f"({layout.cv_report(train_id, plans)}): the ensemble's members are its best trainers")
    pending = [t for t in members if not is_done(run, train_id, test_id, plans, t)]
    if pending:
        raise UserError(f"the ensemble's members {', '.join(pending)} have no finished external predictions on "
                        f"{tests.name}; run their external jobs first")
    folder = pair_folder(layout, train_id, test_id, plans, ENSEMBLE)
    _start(folder, inputs)
    model_folder = layout.model_folder(train_id, members[0], plans)
    dataset_json = json.loads((model_folder / "dataset.json").read_text())
    label_manager = PlansManager(str(model_folder / "plans.json")).get_label_manager(dataset_json)
    todo = [c for c in tests.images if not (folder / "masks" / f"{c}.png").is_file()]
    log(f"ensemble of {' + '.join(members)} on {tests.name} {tests.split}: {len(todo)} image(s) to average")
    for case in todo:
        segmentation, _ = average_probabilities(member_probabilities(layout, train_id, test_id, plans, members, case),
                                                [1.0] * len(members), label_manager)
        _save_mask(folder / "masks" / f"{case}.png", segmentation)
    return score(study, folder, tests, inputs)


def score(study, folder: Path, tests: ExternalImages, inputs: Dict[str, object]) -> Path:
    """Per-image metrics of ``folder/masks`` against the test labels, with cv-report's metrics and
    empty-mask rule; per_case.csv and metrics.json (the job's done marker, written last)."""
    from bus_nnunet.evaluation import folder as F
    from bus_nnunet.io_utils import atomic_write_json, atomic_write_text
    from bus_nnunet.manifest import case_classes_for
    from bus_nnunet.evaluation.metrics import DEFAULT_HD95
    classes = case_classes_for(tests.manifest, list(tests.images)) if tests.manifest.is_file() else {}
    hd95 = getattr(study, "hd95", None) or DEFAULT_HD95
    rows = F.evaluate_cases(folder / "masks", tests.labels, classes, progress=False, expected=list(tests.images),
                            hd95=hd95)
    summary = F.aggregate(rows, hd95=hd95)
    atomic_write_text(folder / "per_case.csv", F.rows_to_csv(rows))
    atomic_write_json(folder / "metrics.json", F.json_safe({
        "inputs": inputs, "test_dataset": tests.name, "test_split": tests.split, "n_images": len(rows),
        "summary": summary, "by_class": F.aggregate_by_class(rows, hd95=hd95)}))
    dice = summary["per_image"]["dice"]
    print(f"{inputs['model']} on {tests.name}: Dice {dice['mean']:.3f} ± {dice['std']:.3f} over {len(rows)} image(s)")
    return folder / "metrics.json"


# -- what the summary reads ------------------------------------------------------------------------
def read_scores(layout, train_id: int, test_id: int, plans: str, model: str) -> Optional[Dict[str, object]]:
    """metrics.json of a finished job (None before)."""
    metrics = pair_folder(layout, train_id, test_id, plans, model) / "metrics.json"
    return json.loads(metrics.read_text()) if metrics.is_file() else None


def read_per_case(layout, train_id: int, test_id: int, plans: str, model: str) -> List[Dict[str, object]]:
    import csv
    path = pair_folder(layout, train_id, test_id, plans, model) / "per_case.csv"
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return [{k: (float(v) if k in ("dice", "iou", "hd95") and v not in ("", "nan") else v)
                 for k, v in row.items()} for row in csv.DictReader(f)]


def paired_tests(per_model: Dict[str, List[Dict[str, object]]]) -> List[Dict[str, object]]:
    """cv-report's paired tests (Wilcoxon, bootstrap CI, Holm within each metric) between the
    models tested on the same external images."""
    from bus_nnunet.evaluation.cross_validation import TrainerResults, pairwise_comparisons
    results = {m: TrainerResults(m, Path("."), rows=[r for r in rows if isinstance(r.get("dice"), float)])
               for m, rows in per_model.items() if rows}
    return pairwise_comparisons(results, metrics=COMPARED_METRICS, n_resamples=2000)


# -- the job's command line ------------------------------------------------------------------------
def command(study_file, train_id: int, test_id: int, plans: str, model: str) -> List[str]:
    """The study job's command (a trainer's prediction gets ``--device`` beside it)."""
    action = "ensemble" if model == ENSEMBLE else "predict"
    return [sys.executable, "-m", "bus_nnunet.study.external_validation", action, str(study_file),
            "--train", str(train_id), "--test", str(test_id), "--plans", plans,
            *(["--trainer", model] if model != ENSEMBLE else [])]


def main(argv=None) -> int:
    from bus_nnunet.study.run import StudyRun
    parser = argparse.ArgumentParser(prog="python -m bus_nnunet.study.external_validation",
                                     description="one external-validation job of a study (run by bus-nnunet study)")
    parser.add_argument("action", choices=("predict", "ensemble"))
    parser.add_argument("study_file")
    parser.add_argument("--train", type=int, required=True, help="training dataset id")
    parser.add_argument("--test", type=int, required=True, help="test dataset id")
    parser.add_argument("--plans", required=True, help="plans identifier the models were trained with")
    parser.add_argument("--trainer", help="predict: the trainer whose fold ensemble predicts")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    run = StudyRun.load(args.study_file)
    try:
        if args.action == "predict":
            if not args.trainer:
                parser.error("predict needs --trainer")
            predict_pair(run, args.train, args.test, args.plans, args.trainer, args.device)
        else:
            ensemble_pair(run, args.train, args.test, args.plans)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
