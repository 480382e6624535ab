"""Shared helpers of the benchmark scripts: machine/version stamp, tables, subprocess runner and
the fixed-budget ``nnUNetv2_train`` launcher.

Run as a script, ``python benchmarks/_common.py budget-train <nnUNetv2_train arguments>`` is
``nnUNetv2_train`` with the schedule overrides ``BUS_NNUNET_NUM_EPOCHS`` /
``BUS_NNUNET_NUM_ITERATIONS`` / ``BUS_NNUNET_NUM_VAL_ITERATIONS`` applied to EVERY trainer,
including nnU-Net's stock ``nnUNetTrainer`` (which does not read them itself), so all trainers of
a study get the same budget.  ``BUS_NNUNET_TORCH_THREADS`` pins torch's CPU threads (nnU-Net
would take every core).
"""
from __future__ import annotations

import datetime
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Sequence

BIN = Path(sys.executable).parent


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


def markdown_table(header: Sequence[str], rows: List[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(map(str, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join("" if c is None else str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def run_command(cmd: Sequence[object], env: Dict[str, str] = None, timeout: float = None, log=None
                ) -> subprocess.CompletedProcess:
    """Run a console script of this venv (or any executable) with ``env`` on top of os.environ."""
    cmd = [str(c) for c in cmd]
    if not os.path.isabs(cmd[0]) and (BIN / cmd[0]).exists():
        cmd[0] = str(BIN / cmd[0])
    if log:
        log(f"$ {' '.join(cmd)}")
    return subprocess.run(cmd, env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=timeout)


def _budget_train(argv: Sequence[str]) -> None:
    """nnUNetv2_train with the BUS_NNUNET_* schedule overrides applied to every trainer class."""
    import torch
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from bus_nnunet.trainers.base import SCHEDULE_ENV
    original_init = nnUNetTrainer.__init__

    # nnU-Net records its __init__ arguments by signature, so keep the exact one
    def init_with_budget(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                         device: torch.device = torch.device("cuda")):
        original_init(self, plans, configuration, fold, dataset_json, device)
        for attr, env in SCHEDULE_ENV.items():
            if os.environ.get(env):
                setattr(self, attr, int(os.environ[env]))
                self.print_to_log_file(f"benchmark budget: {env}={os.environ[env]} -> {attr}")

    nnUNetTrainer.__init__ = init_with_budget
    threads = os.environ.get("BUS_NNUNET_TORCH_THREADS")
    if threads:
        # nnU-Net sets cpu_count() threads on CPU; on a shared machine that makes every parallel op wait for
        # a busy core (~10x slower), so a study may pin its own count
        torch.set_num_threads(int(threads))
        torch.set_num_threads = lambda n: None
    # our trainers re-apply the same overrides after their recipe; the env wins either way
    from nnunetv2.run.run_training import run_training_entry
    sys.argv = ["nnUNetv2_train", *argv]
    run_training_entry()


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "budget-train":
        _budget_train(sys.argv[2:])
    else:
        sys.exit("usage: python benchmarks/_common.py budget-train <nnUNetv2_train arguments>")
