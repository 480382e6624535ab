"""Per-pixel uncertainty from several probability maps of the same image (the folds of an
nnU-Net ensemble, saved with ``--save_probabilities`` / ``--npz``).

For member probabilities ``p_m`` (C classes) and their mean ``p``:

* ``entropy`` = H(p) / log C, the normalised predictive entropy (0 = certain, 1 = uniform);
* ``mutual_information`` = H(p) - mean_m H(p_m), also / log C: the part of the entropy that comes
  from members disagreeing (epistemic), 0 for a single member;
* ``disagreement`` = fraction of members whose arg-max class differs from the ensemble's.
"""
from __future__ import annotations

from typing import Dict, Sequence

import numpy as np

MAP_NAMES = ("entropy", "mutual_information", "disagreement")


def _entropy(p: np.ndarray, axis: int = 0) -> np.ndarray:
    p = np.clip(p, 1e-12, 1.0)
    return -(p * np.log(p)).sum(axis=axis)


def uncertainty_maps(member_probabilities: Sequence[np.ndarray]) -> Dict[str, np.ndarray]:
    """The maps of :data:`MAP_NAMES` from member probabilities, each (C, H, W) summing to 1 over C."""
    members = np.stack([np.asarray(p, dtype=np.float64) for p in member_probabilities])  # (M, C, H, W)
    if members.ndim != 4:
        raise ValueError(f"expected (C, H, W) probability maps, got {members.shape[1:]}")
    n_classes = members.shape[1]
    norm = np.log(n_classes) if n_classes > 1 else 1.0
    mean = members.mean(axis=0)
    entropy = _entropy(mean) / norm
    expected = np.mean([_entropy(m) for m in members], axis=0) / norm
    ensemble_label = mean.argmax(axis=0)
    disagreement = (members.argmax(axis=1) != ensemble_label[None]).mean(axis=0)
    return {"entropy": entropy.astype(np.float32),
            "mutual_information": np.clip(entropy - expected, 0, None).astype(np.float32),
            "disagreement": disagreement.astype(np.float32), "mean_probabilities": mean.astype(np.float32)}
