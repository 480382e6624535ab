"""What the tests, the benchmarks and the demo share when they drive nnU-Net on generated data.

* :func:`nnunet_env` -- the three nnU-Net folders (``nnUNet_raw`` / ``_preprocessed`` /
  ``_results``) under one root, created;
* :func:`plan_command` / :func:`plan_synthetic_dataset` -- a synthetic dataset written in nnU-Net's
  raw format and planned and preprocessed by nnU-Net's own planner.

Running this environment's console scripts is :mod:`bus_nnunet.tool_runner`; training with a fixed
budget is :mod:`bus_nnunet.study.budget_train`; process memory is :mod:`bus_nnunet.profiling`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional

from bus_nnunet.tool_runner import run_tool

NNUNET_FOLDERS = ("raw", "preprocessed", "results")


def nnunet_env(root, prefix: str = "") -> Dict[str, str]:
    """``nnUNet_raw`` / ``nnUNet_preprocessed`` / ``nnUNet_results`` as ``root/<prefix>raw`` etc.,
    created; the dict goes on top of ``os.environ`` for the commands that read them."""
    env = {f"nnUNet_{name}": str(Path(root) / f"{prefix}{name}") for name in NNUNET_FOLDERS}
    for folder in env.values():
        Path(folder).mkdir(parents=True, exist_ok=True)
    return env


def plan_command(dataset_id: int, verify: bool = True, processes: int = 2) -> List[object]:
    """``nnUNetv2_plan_and_preprocess`` for the 2d configuration with ``processes`` workers."""
    return ["nnUNetv2_plan_and_preprocess", "-d", dataset_id, "-c", "2d", "-np", processes, "-npfp", processes,
            *(["--verify_dataset_integrity"] if verify else []), "--no_pbar"]


def plan_synthetic_dataset(env: Dict[str, str], dataset_id: int, name: str, n_cases: int = 12, size=(64, 64),
                           n_test: int = 0, verify: bool = True, extra_env: Optional[Dict[str, str]] = None,
                           timeout: Optional[float] = None) -> Path:
    """Write ``bus_nnunet.synthetic``'s cases as ``Dataset<id>_<name>`` under ``env["nnUNet_raw"]``
    and plan and preprocess them with nnU-Net's planner; returns the raw dataset folder."""
    from bus_nnunet.synthetic import write_nnunet_raw
    raw = write_nnunet_raw(env["nnUNet_raw"], dataset_id, name, n_cases=n_cases, size=tuple(size), n_test=n_test)
    run_tool(plan_command(dataset_id, verify), {**env, **(extra_env or {})}, timeout=timeout, check=True)
    return raw


