"""Splits and duplicates of a conversion: stratified group folds, the test hold-out, and exact / near
(pHash) duplicate pairs, so that a patient's images and copies of one image never straddle folds."""
from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from typing import Dict, List

import numpy as np

from bus_nnunet.dataset_conversion.base import Case
from bus_nnunet.errors import UserError

__all__ = ["DEFAULT_PHASH_DISTANCE", "UnionFind", "pixel_sha256", "find_duplicates", "make_folds", "holdout_test"]

DEFAULT_PHASH_DISTANCE = 8  # 64-bit pHash Hamming distance for near-duplicates (as used on BUSI)


class UnionFind:
    """Disjoint sets of case ids (path halving); a set's id is its smallest member."""

    def __init__(self, items):
        self.parent = {i: i for i in items}

    def find(self, x):
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a, b):
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)



def pixel_sha256(arr: np.ndarray) -> str:
    return hashlib.sha256(repr(arr.shape).encode() + np.ascontiguousarray(arr).tobytes()).hexdigest()



def find_duplicates(case_ids: List[str], pixel_hashes: List[str], phashes: List[np.ndarray],
                    max_distance: int) -> List[Dict[str, object]]:
    """Pairs of exact (same pixels) and near (pHash Hamming distance <= max_distance) duplicates."""
    pairs = []
    by_hash = defaultdict(list)
    for cid, h in zip(case_ids, pixel_hashes):
        by_hash[h].append(cid)
    exact = set()
    for ids in by_hash.values():
        for other in ids[1:]:
            pairs.append({"case_a": ids[0], "case_b": other, "kind": "exact", "phash_distance": 0})
            exact.add((ids[0], other))
    if max_distance >= 0 and len(phashes) > 1:
        bits = np.stack(phashes).astype(np.float32)  # n × 64 of 0/1
        dist = bits @ (1 - bits).T + (1 - bits) @ bits.T
        ia, ib = np.nonzero(np.triu(dist <= max_distance, k=1))
        for a, b in zip(ia.tolist(), ib.tolist()):
            if (case_ids[a], case_ids[b]) not in exact and pixel_hashes[a] != pixel_hashes[b]:
                pairs.append({"case_a": case_ids[a], "case_b": case_ids[b], "kind": "near",
                              "phash_distance": int(dist[a, b])})
    return pairs


def make_folds(case_ids: List[str], labels: List[str], groups: List[str], n_folds: int,
               seed: int) -> List[Dict[str, List[str]]]:
    """``n_folds`` folds stratified by ``labels`` with every group in one fold (StratifiedGroupKFold,
    shuffled with ``seed``: the same input gives the same folds)."""
    from sklearn.model_selection import StratifiedGroupKFold
    import warnings
    if n_folds < 2:
        raise UserError(f"--folds must be at least 2 (got {n_folds})")
    n_groups = len(set(groups))
    if n_groups < n_folds:
        raise UserError(f"only {n_groups} independent case groups for {n_folds} folds; use --folds {max(2, n_groups)} "
                        f"or fewer")
    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    ids = np.array(case_ids)
    folds = []
    with warnings.catch_warnings():  # "least populated class has only N members": expected for tiny sets
        warnings.simplefilter("ignore", UserWarning)
        for train_idx, val_idx in splitter.split(ids, labels, groups):
            folds.append({"train": sorted(ids[train_idx].tolist()), "val": sorted(ids[val_idx].tolist())})
    return folds


def holdout_test(cases: List[Case], fraction: float, groups: Dict[str, str], seed: int) -> List[str]:
    """Case ids of a stratified, group-respecting test hold-out of about ``fraction``."""
    if not 0 < fraction <= 0.5:  # the hold-out is one of round(1 / fraction) stratified group folds
        raise UserError(f"--test-fraction must be above 0 and at most 0.5 (got {fraction}): a larger hold-out "
                        f"than training set is not a cross-validation setup")
    labels = [c.cls or "none" for c in cases]
    scarce = sorted((k, v) for k, v in Counter(labels).items() if v < 2)
    if scarce:
        raise UserError(f"--test-fraction {fraction} keeps every class in both the hold-out and training, which "
                        f"needs at least 2 cases per class; {', '.join(f'class {k} has {v}' for k, v in scarce)} "
                        f"(of {len(cases)} cases): add cases or drop --test-fraction")
    n_splits = max(2, int(round(1 / fraction)))
    folds = make_folds([c.case_id for c in cases], labels,
                       [groups[c.case_id] for c in cases], n_splits, seed)
    return folds[0]["val"]
