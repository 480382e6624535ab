"""The study file checked against the disk before any job runs.

:func:`bus_nnunet.study.config.load_study` checks the file's syntax and values; :func:`problems`
checks what only the disk can tell -- every converter source exists, every dataset id is converted
by the study or present in ``nnUNet_raw``, every fold exists in the dataset's folds (nnU-Net trains
a fold it does not have on a random 80:20 split, silently), every trainer is found, and the output
folder is, contains or lies inside none of the study's inputs.  Each problem names its key, and all
of them are reported at once.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import List, Optional

from bus_nnunet.errors import UserError, did_you_mean
from bus_nnunet.study.config import DatasetSpec, Study

#: folds nnU-Net makes itself (5-fold KFold) for a dataset without a splits_final.json
NNUNET_DEFAULT_FOLDS = 5


def require_valid(run) -> None:
    """Raise one UserError listing every problem of :func:`problems` of a
    :class:`bus_nnunet.study.run.StudyRun` (nothing has run yet)."""
    study = run.study
    found = problems(study, run.layout)
    if found:
        raise UserError(f"{study.file}: {len(found)} problem{'s' if len(found) > 1 else ''}; nothing was run:\n  "
                        + "\n  ".join(found))


def problems(study: Study, layout) -> List[str]:
    """Every problem of the study file against the disk, as ``key: message`` lines."""
    found: List[str] = []
    inputs = []  # (key, folder the study reads)
    for i, ds in enumerate(study.datasets):
        key = f"datasets[{i}]"
        dataset_problems = (_converted_dataset_problems if ds.converter else _existing_dataset_problems)(
            study, layout, ds, key, inputs)
        if not ds.train:  # only tested on: the study's folds are not trained on it
            dataset_problems = [p for p in dataset_problems if not p.startswith("folds:")]
        found += dataset_problems
    found += _output_problems(study, inputs)
    found += _trainer_problems(study)
    found += _external_problems(study, layout)
    return found


# -- datasets --------------------------------------------------------------------------------------
def _raw_folders(layout, dataset_id: int) -> List[Path]:
    return sorted(p for p in layout.raw.glob(f"Dataset{dataset_id:03d}_*") if p.is_dir()) \
        if layout.raw.is_dir() else []


def _existing_dataset_problems(study: Study, layout, ds: DatasetSpec, key: str, inputs) -> List[str]:
    folders = _raw_folders(layout, ds.id)
    if not folders:
        return [f"{key}.id: Dataset {ds.id:03d} is neither converted by this study (no converter/source) nor "
                f"present in nnUNet_raw ({layout.raw})"]
    if len(folders) > 1:
        return [f"{key}.id: nnUNet_raw has {len(folders)} folders with id {ds.id:03d} "
                f"({', '.join(f.name for f in folders)}); nnU-Net needs exactly one"]
    inputs.append((key, folders[0]))
    if not (folders[0] / "dataset.json").is_file():
        return [f"{key}.id: {folders[0]} has no dataset.json (not an nnU-Net raw dataset)"]
    return _fold_problems(study, folders[0].name, key, *_folds_on_disk(layout, folders[0].name))


def _converted_dataset_problems(study: Study, layout, ds: DatasetSpec, key: str, inputs) -> List[str]:
    found = []
    source = (study.root / ds.source).resolve()
    try:
        args = _convert_arguments(ds, source)
    except ValueError as e:
        return [f"{key}.convert_args: {e}"]
    name = f"Dataset{ds.id:03d}_{args.name or _default_name(ds.converter)}"
    inputs.append((f"{key}.source", source))
    inputs.append((key, layout.raw / name))
    folders = [f for f in _raw_folders(layout, ds.id) if (f / "dataset.json").is_file()]
    if folders and folders[0].name != name:
        # the convert job would count that folder as this dataset, converted, and train on it
        return [f"{key}.id: nnUNet_raw already has {folders[0].name} with id {ds.id:03d}, but this study converts "
                f"{ds.converter} into {name}: choose another id, or remove converter/source to use that dataset"]
    if folders:  # converted before: its folds are on disk (the source is no longer needed)
        return _fold_problems(study, name, key, *_folds_on_disk(layout, name))
    if not source.exists():
        found.append(f"{key}.source: folder {source} does not exist")
    elif not source.is_dir():
        found.append(f"{key}.source: {source} is not a folder")
    # tg3k's --official-split writes its one official fold; every other converter writes --folds folds
    if getattr(args, "official_split", False):
        count, why = 1, f"`bus-nnunet convert {ds.converter} --official-split` writes fold 0 only"
    else:
        count = args.folds
        why = f"`bus-nnunet convert {ds.converter}` writes {_fold_range(count)} (--folds in convert_args, default 5)"
    return found + _fold_problems(study, name, key, count, why)


class _RaisingParser(argparse.ArgumentParser):
    def error(self, message):
        raise ValueError(message)


def _convert_arguments(ds: DatasetSpec, source: Path) -> argparse.Namespace:
    """``convert_args`` parsed by ``bus-nnunet convert``'s own parser (a mistyped option is an error
    here, not a failed convert job)."""
    from bus_nnunet.commands import convert
    parser = _RaisingParser(prog="bus-nnunet", add_help=False)
    convert.register(parser.add_subparsers(dest="command"))
    return parser.parse_args(["convert", ds.converter, str(source), *ds.convert_args])


def _default_name(converter: str) -> str:
    from bus_nnunet.dataset_conversion import get_converter
    return get_converter(converter).default_name


def _folds_on_disk(layout, name: str):
    """(number of folds or None, why): nnU-Net trains on the preprocessed splits_final.json (which
    planning copies there from nnUNet_raw), else on 5 folds it makes itself."""
    for splits in (layout.preprocessed / name / "splits_final.json", layout.raw / name / "splits_final.json"):
        if splits.is_file():
            try:
                count = len(json.loads(splits.read_text()))
            except (ValueError, TypeError):
                return None, f"{splits} is not a list of folds (invalid JSON)"
            return count, f"its {splits} has {_fold_range(count)}"
    return NNUNET_DEFAULT_FOLDS, f"it has no splits_final.json, so nnU-Net makes {_fold_range(NNUNET_DEFAULT_FOLDS)}"


def _fold_range(count: int) -> str:
    return "fold 0 only" if count == 1 else f"folds 0-{count - 1}"


def _fold_problems(study: Study, name: str, key: str, count: Optional[int], why: str) -> List[str]:
    if count is None:
        return [f"{key}: {why}"]
    # nnU-Net trains a fold beyond its splits on a random 80:20 split instead of failing
    return [f"folds: fold {f} does not exist in {key} ({name}): {why}"
            for f in study.folds if f != "all" and not 0 <= f < count]


# -- the output folder -----------------------------------------------------------------------------
def _output_problems(study: Study, inputs) -> List[str]:
    from bus_nnunet.io_utils import check_not_overlapping
    found = []
    for key, folder in inputs:
        try:
            check_not_overlapping(study.output_dir, [folder], what="the study's output folder")
        except UserError as e:
            found.append(f"output: {e} ({key})")
    return found


# -- external validation ---------------------------------------------------------------------------
def _external_problems(study: Study, layout) -> List[str]:
    """Label and spacing mismatches of the ``[external]`` pairs whose datasets are in nnUNet_raw
    already (the external jobs check the others when they run)."""
    from bus_nnunet.study import external_validation as EV
    found: List[str] = []
    for train, test in EV.external_pairs(study):
        if all(len(_raw_folders(layout, d)) == 1 and (_raw_folders(layout, d)[0] / "dataset.json").is_file()
               for d in (train, test)):
            for plans in map(study.trained_plans, study.plans):
                found += [f"external.{train}: {p}" for p in EV.pair_problems(layout, train, test, plans)]
    return list(dict.fromkeys(found))


# -- trainers --------------------------------------------------------------------------------------
def _trainer_problems(study: Study) -> List[str]:
    from bus_nnunet.registration import ensure_registered, lookup_trainer
    from bus_nnunet.trainers import TRAINERS
    ensure_registered()
    known = ["nnUNetTrainer", *TRAINERS]
    return [f"trainers: unknown trainer {t!r}: {did_you_mean(t, known)}`bus-nnunet trainers` lists them"
            for t in study.trainers if lookup_trainer(t)["module"] is None]

