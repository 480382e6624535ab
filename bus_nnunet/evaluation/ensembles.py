"""Ensembles of the trainers of a cross-validation report, scored on the out-of-fold validation
probabilities exactly like a trainer (issue 23).

nnU-Net's ``nnUNetv2_find_best_configuration`` only tries pairs of models; this scores, beside
the trainers of ``bus-nnunet cv-report``:

* ``all`` -- the ensemble of every trainer of the report;
* ``best<k>`` -- the ensemble of the ``k`` trainers with the highest mean per-image Dice over all
  validation cases of the report (the report's own empty-mask rule; ties keep the ``-tr`` order).

Per validation case the members' softmax probabilities (``fold_k/validation/<case>.npz``, written
by ``nnUNetv2_train ... --npz``) are averaged and turned into a segmentation by nnU-Net's own
``merge_files`` -- the function ``nnUNetv2_ensemble`` runs, so the ensemble's segmentation is
nnU-Net's, file for file.  The segmentations are written in nnU-Net's layout
(``<folder>/fold_k/validation/<case><file_ending>``) and scored by the same code as the trainers'
validation folders, so the metrics, the empty-mask rule and the HD95 convention cannot differ.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from bus_nnunet.errors import UserError
from bus_nnunet.evaluation import metrics as M

_SELECTION = re.compile(r"^(all|best([0-9]+))$")


@dataclass(frozen=True)
class Ensemble:
    """One ensemble of a report: ``name`` (its row in the tables), ``selection`` (``all`` or
    ``best<k>``, as asked), ``members`` (trainer names, in ``-tr`` order) and ``slug`` (its
    file-safe name: output folder and figure names)."""
    name: str
    selection: str
    members: Tuple[str, ...]
    slug: str


def check_selections(selections: Sequence[str]) -> List[str]:
    """Validate ensemble selections (``all``, ``best<k>`` with ``k >= 2``); returns them as a list.

    Raises
    ------
    UserError
        For an unknown or repeated selection, or ``best<k>`` with ``k < 2`` (one trainer is no
        ensemble: its row is already in the report).
    """
    out = []
    for selection in selections:
        match = _SELECTION.match(str(selection))
        if not match:
            raise UserError(f"unknown ensemble {selection!r}: use 'all' (every trainer) or 'best<k>' "
                            f"(the k trainers with the highest mean Dice), e.g. --ensembles all best3")
        if match.group(2) is not None and int(match.group(2)) < 2:
            raise UserError(f"ensemble {selection!r}: k must be at least 2 (one trainer is its own row)")
        if selection in out:
            raise UserError(f"ensemble {selection!r} is asked for twice")
        out.append(selection)
    return out


def mean_dice_by_trainer(results) -> Dict[str, float]:
    """Mean per-image Dice of each trainer over all its validation cases in the report (NaN-free
    mean, as in the tables); trainers without scored cases are left out."""
    return {name: M.summarize([r["dice"] for r in res.rows])["mean"] for name, res in results.items() if res.rows}


def choose_ensembles(results, selections: Sequence[str]) -> Tuple[List[Ensemble], List[str]]:
    """The ensembles to score for ``selections`` over the trainers of ``results``
    (``trainer -> TrainerResults`` of :func:`bus_nnunet.evaluation.cross_validation.collect`).

    Returns
    -------
    ensembles : list of Ensemble
        One per selection, except that a selection with the same members as an earlier one is
        scored once (``best3`` of three trainers is ``all``).
    notes : list of str
        One sentence per ensemble left out that way, for the report.

    Raises
    ------
    UserError
        If the report has fewer than 2 trainers, a trainer has no validation predictions (an
        ``all`` ensemble without it would not be what it says) or ``best<k>`` asks for more
        trainers than the report has.
    """
    selections = check_selections(selections)
    if not selections:
        return [], []
    unscored = [name for name, res in results.items() if not res.rows]
    if unscored:
        raise UserError(f"ensembles need every trainer's validation predictions; {', '.join(unscored)} has none "
                        f"(train it, or leave it out of -tr)")
    order = list(results)
    if len(order) < 2:
        raise UserError(f"ensembles need at least 2 trainers; -tr names {len(order)}")
    ranked = sorted(order, key=lambda t: -mean_dice_by_trainer(results)[t])  # stable: ties keep -tr order
    ensembles, notes = [], []
    for selection in selections:
        if selection == "all":
            members, name = tuple(order), "ensemble(all)"
        else:
            k = int(selection[len("best"):])
            if k > len(order):
                raise UserError(f"ensemble {selection}: the report has only {len(order)} trainer(s); "
                                f"pass best<k> with k <= {len(order)}")
            chosen = set(ranked[:k])
            members = tuple(t for t in order if t in chosen)
            name = f"ensemble({selection}: {'+'.join(members)})"
        same = next((e for e in ensembles if set(e.members) == set(members)), None)
        if same is not None:
            notes.append(f"ensemble {selection} has the same members as {same.name}; scored once")
            continue
        ensembles.append(Ensemble(name, selection, members, f"ensemble_{selection}"))
    return ensembles, notes


def _nnunet_merger(model_folder: Path):
    """nnU-Net's reader/writer, label manager and file ending of a trained model folder, as
    ``nnUNetv2_ensemble`` builds them from the folder's ``plans.json`` and ``dataset.json``."""
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    for name in ("plans.json", "dataset.json"):
        if not (model_folder / name).is_file():
            raise UserError(f"{model_folder / name} not found: ensembles need nnU-Net's model folder as "
                            f"nnUNetv2_train leaves it")
    plans = PlansManager(str(model_folder / "plans.json"))
    dataset_json = load_json(str(model_folder / "dataset.json"))
    return plans.image_reader_writer_class(), plans.get_label_manager(dataset_json), dataset_json["file_ending"]


def _missing_probabilities_error(ensemble: Ensemble, trainer: str, model_folder: Path, fold: int,
                                 missing: Sequence[str], n_cases: int) -> UserError:
    dataset = model_folder.parent.name
    _, plans, configuration = (model_folder.name.split("__") + ["?", "?"])[:3]
    val = model_folder / f"fold_{fold}" / "validation"
    shown = ", ".join(missing[:5]) + (f" (and {len(missing) - 5} more)" if len(missing) > 5 else "")
    return UserError(f"{ensemble.name}: {trainer} fold {fold} has no saved probabilities (.npz + .pkl) for "
                     f"{len(missing)} of {n_cases} validation case(s) in {val}: {shown}; write them with "
                     f"nnUNetv2_train {dataset} {configuration} {fold} -tr {trainer} -p {plans} --val --npz")


def write_ensemble_predictions(ensemble: Ensemble, results, folder, *, progress: bool = True) -> Dict[int, List[str]]:
    """Average the members' validation probabilities per case and write the segmentations to
    ``folder/fold_k/validation`` with nnU-Net's ``merge_files`` (what ``nnUNetv2_ensemble`` does).

    Only the folds every member has are ensembled; the cases of a fold are those any member scored
    there, and every member must have saved probabilities for each of them.

    Parameters
    ----------
    ensemble : Ensemble
    results : dict
        ``trainer -> TrainerResults`` of the report.
    folder : path-like
        Output folder of this ensemble (created).
    progress : bool, default True
        Show a progress bar.

    Returns
    -------
    dict
        ``fold -> case ids`` written.

    Raises
    ------
    UserError
        If the members share no fold, or a member lacks the ``.npz``/``.pkl`` of a case (naming
        the trainer, the fold and the ``nnUNetv2_train ... --val --npz`` that writes them).
    """
    from nnunetv2.ensembling.ensemble import merge_files
    from tqdm import tqdm
    members = [results[t] for t in ensemble.members]
    folds = sorted(set.intersection(*(set(m.folds_found) for m in members)))
    if not folds:
        raise UserError(f"{ensemble.name}: its members share no fold with validation predictions "
                        f"({', '.join(f'{m.trainer}: {m.folds_found}' for m in members)})")
    reader_writer, label_manager, file_ending = _nnunet_merger(members[0].folder)
    folder = Path(folder)
    written = {}
    for fold in folds:
        cases = sorted({r["case_id"] for m in members for r in m.rows if r["fold"] == fold})
        inputs = {}
        for m in members:
            val = m.folder / f"fold_{fold}" / "validation"
            missing = [c for c in cases if not ((val / f"{c}.npz").is_file() and (val / f"{c}.pkl").is_file())]
            if missing:
                raise _missing_probabilities_error(ensemble, m.trainer, m.folder, fold, missing, len(cases))
            inputs[m.trainer] = val
        out = folder / f"fold_{fold}" / "validation"
        out.mkdir(parents=True, exist_ok=True)
        for case in tqdm(cases, desc=f"{ensemble.name} fold {fold}", disable=not progress, unit="case"):
            # member order as given: nnU-Net sums in that order, so the float32 mean is bit-identical
            merge_files([str(inputs[t] / f"{case}.npz") for t in ensemble.members], str(out / case), file_ending,
                        reader_writer, label_manager)
        written[fold] = cases
    return written


def score_ensemble(ensemble: Ensemble, results, folder, *, gt_dir, classes: Optional[Dict[str, str]] = None,
                   progress: bool = True):
    """Write the ensemble's validation segmentations (:func:`write_ensemble_predictions`) and score
    them fold by fold exactly like a trainer's (:func:`cross_validation.score_validation_fold`, the
    members' empty-mask rule and HD95 convention).

    Returns
    -------
    TrainerResults
        Named ``ensemble.name``, ``folder`` the ensemble's output folder; folds some member lacks
        are in ``folds_missing``.
    """
    from bus_nnunet.evaluation import cross_validation as R
    members = [results[t] for t in ensemble.members]
    rules = {"empty_truth": members[0].empty_truth, "hd95": members[0].hd95}
    written = write_ensemble_predictions(ensemble, results, folder, progress=progress)
    res = R.TrainerResults(ensemble.name, Path(folder), **rules)
    for fold, cases in written.items():
        res.rows += R.score_validation_fold(Path(folder) / f"fold_{fold}" / "validation", gt_dir, fold, cases,
                                            classes=classes, progress=progress,
                                            description=f"{ensemble.name} fold {fold}", **rules)
        res.folds_found.append(fold)
    res.folds_missing = sorted(set().union(*(m.folds_found + m.folds_missing for m in members)) - set(written))
    return res


def ensemble_summary_fields(ensemble: Ensemble, dice_by_trainer: Dict[str, float]) -> Dict[str, object]:
    """What metrics.json adds to an ensemble's entry beside the trainer schema: ``members``,
    ``selection``, the rule it was chosen by and its members' mean Dice."""
    rule = ("every trainer of the report" if ensemble.selection == "all" else
            f"the {ensemble.selection[len('best'):]} trainers with the highest mean per-image Dice over all "
            f"validation cases of this report")
    return {"members": list(ensemble.members), "selection": ensemble.selection, "selection_rule": rule,
            "member_mean_dice": {t: dice_by_trainer.get(t) for t in ensemble.members}}


def describe(ensembles: Sequence[Ensemble], notes: Sequence[str] = ()) -> Optional[str]:
    """A paragraph for the report saying how the ensemble rows were built (None without ensembles)."""
    if not ensembles:
        return None
    text = ("Ensemble rows: per validation case the mean of the members' softmax probabilities "
            "(fold_k/validation/<case>.npz of nnUNetv2_train --npz), argmax -> segmentation, by nnU-Net's "
            "own merge_files (as nnUNetv2_ensemble); the segmentations are in ensembles/<name>/fold_k/validation "
            "and are scored like a trainer's. best<k>: the k trainers with the highest mean per-image Dice over "
            "all validation cases of this report. Only folds every member has are ensembled. Members: " +
            "; ".join(f"{e.name} = {' + '.join(e.members)}" for e in ensembles) + ".")
    return " ".join([text, *(n[0].upper() + n[1:] + "." for n in notes)])
