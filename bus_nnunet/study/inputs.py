"""What a study job's outputs were computed from: the trained folds it used.

Every job that uses trained models -- the ensemble search, the cv-reports, the summary, the
external tests -- keeps a record of each fold's ``checkpoint_final.pth`` (size, mtime in ns) as it
was when the job started.  A fold retrained, added or removed since makes the record differ from
the disk: the job is *stale*, pending again with the reason (:func:`stale_reason`), and the next
``study run`` computes it again -- and nothing else.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, Iterable, List, Optional

#: ``"<dataset id>/<plans>/<trainer>/<fold>" -> [size, mtime_ns]`` of each existing checkpoint_final.pth
Record = Dict[str, List[int]]


def checkpoint_record(layout, dataset_id: int, plans: Iterable[str], trainers: Iterable[str], folds) -> Record:
    """The record of the folds a job uses: every (plans, trainer, fold) whose ``checkpoint_final.pth``
    exists now (a fold without one is absent: once trained, it is "added")."""
    record: Record = {}
    for p in plans:
        for trainer in trainers:
            for fold in folds:
                folder = layout.fold_folder(dataset_id, trainer, p, fold)
                checkpoint = folder / "checkpoint_final.pth" if folder is not None else None
                if checkpoint is not None and checkpoint.is_file():
                    stat = checkpoint.stat()
                    record[f"{dataset_id}/{p}/{trainer}/{fold}"] = [stat.st_size, stat.st_mtime_ns]
    return record


def stale_reason(recorded: Record, current: Record, what: str, name_of=None) -> Optional[str]:
    """Why outputs computed from ``recorded`` are stale now (None: they are not), for the first
    fold that differs, e.g. ``"nnUNetTrainerUS fold 1 trained after this report"``.  ``name_of``
    (dataset id -> name) adds the dataset and plans, for a job over several of them."""
    for key in sorted(set(recorded) | set(current), key=lambda k: k.split("/")):
        if recorded.get(key) == current.get(key):
            continue
        dataset_id, plans, trainer, fold = key.split("/")
        where = f" of {name_of(int(dataset_id))} ({plans})" if name_of else ""
        if key not in current:
            return f"{trainer} fold {fold}{where} removed since this {what}"
        if key not in recorded:
            return f"{trainer} fold {fold}{where} trained (added) after this {what}"
        return f"{trainer} fold {fold}{where} trained after this {what}"
    return None


def read_record(path: Path) -> Optional[Record]:
    """A job's recorded inputs (None: no record, or an unreadable one)."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def write_record(path: Path, record: Record) -> None:
    from bus_nnunet.io_utils import atomic_write_json
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, record)
