"""Shared helpers of the benchmark scripts: machine/version stamp, tables, subprocess runner and
the fixed-budget ``nnUNetv2_train`` launcher (the runner, the tables and the launcher live in
:mod:`bus_nnunet.tool_runner`, :mod:`bus_nnunet.study.budget_train` and :mod:`bus_nnunet.text_tables`, shared with the tests and the demo).

Run as a script, ``python benchmarks/_common.py budget-train <nnUNetv2_train arguments>`` is
:func:`bus_nnunet.study.budget_train.budget_train`: ``nnUNetv2_train`` with the schedule overrides
``BUS_NNUNET_NUM_EPOCHS`` / ``BUS_NNUNET_NUM_ITERATIONS`` / ``BUS_NNUNET_NUM_VAL_ITERATIONS``
applied to EVERY trainer, including nnU-Net's stock ``nnUNetTrainer`` (which does not read them
itself), so all trainers of a study get the same budget.  ``BUS_NNUNET_TORCH_THREADS`` pins
torch's CPU threads (nnU-Net would take every core).
"""
from __future__ import annotations

import datetime
import os
import platform
import sys
from typing import Dict

from bus_nnunet.study.budget_train import budget_train
# the benchmark scripts import these from here
from bus_nnunet.tool_runner import run_tool as run_command  # noqa: F401
from bus_nnunet.text_tables import markdown_table  # noqa: F401


def environment_stamp(device: str = "cpu") -> Dict[str, object]:
    """Device, library versions, date and CPU load: what a reader needs to judge a number."""
    import torch
    stamp = {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "host": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": device,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    for mod in ("nnunetv2", "timm", "thop", "bus_nnunet", "dynamic_network_architectures"):
        try:
            from importlib.metadata import version
            stamp[mod] = version(mod.replace("_", "-") if mod != "bus_nnunet" else "bus-nnunet")
        except Exception:
            try:
                stamp[mod] = getattr(__import__(mod), "__version__", "installed")
            except Exception:
                stamp[mod] = "missing"
    if device.startswith("cuda") and torch.cuda.is_available():
        stamp["gpu"] = torch.cuda.get_device_name(0)
        stamp["cuda"] = torch.version.cuda
    try:
        stamp["load_average_1_5_15min"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    return stamp


def stamp_markdown(stamp: Dict[str, object]) -> str:
    keys = ("date_utc", "device", "gpu", "cuda", "cpu_count", "torch_threads", "load_average_1_5_15min", "updated_utc",
            "load_average_at_update", "torch",
            "nnunetv2", "dynamic_network_architectures", "timm", "thop", "python", "platform")
    return "\n".join(f"- **{k}**: {stamp[k]}" for k in keys if k in stamp)


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "budget-train":
        budget_train(sys.argv[2:], label="benchmark budget")
    else:
        sys.exit("usage: python benchmarks/_common.py budget-train <nnUNetv2_train arguments>")


def add_real_data_budget_arguments(p) -> None:
    """The real-data presets' one budget (external validation, classification): fold 0 of images
    downscaled to a longer side <= 128 px, 10 x 30 iterations at batch 4 for every trainer."""
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--iterations", type=int, default=30, help="training iterations per epoch (default 30)")
    p.add_argument("--val-iterations", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--max-size", type=int, default=128)
    p.add_argument("--fold", type=int, default=0)
