"""What the tests, the benchmarks and the demo share when they drive nnU-Net for real.

* :func:`nnunet_env` -- the three nnU-Net folders (``nnUNet_raw`` / ``_preprocessed`` /
  ``_results``) under one root, created;
* :func:`tool` / :func:`run_tool` -- a console script of *this* environment (``nnUNetv2_train``,
  ``bus-nnunet``), so a run never picks up another install on ``PATH``;
* :func:`plan_command` / :func:`plan_synthetic_dataset` -- a synthetic dataset written in nnU-Net's
  raw format and planned and preprocessed by nnU-Net's own planner;
* :func:`budget_train` -- ``nnUNetv2_train`` with the ``BUS_NNUNET_*`` schedule variables applied
  to every trainer class, nnU-Net's stock ones included;
* :func:`rss_bytes` / :func:`peak_rss_bytes` / :func:`reset_peak_rss` -- this process's memory.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

BIN = Path(sys.executable).parent
NNUNET_FOLDERS = ("raw", "preprocessed", "results")


class CommandFailed(RuntimeError):
    """A command run with ``check=True`` exited non-zero; the message carries its output's tail."""

    def __init__(self, cmd: Sequence[str], proc: subprocess.CompletedProcess, tail: int = 6000):
        self.returncode, self.stdout, self.stderr = proc.returncode, proc.stdout, proc.stderr
        super().__init__(f"{' '.join(cmd)} exited {proc.returncode}\n--- stdout ---\n{(proc.stdout or '')[-tail:]}"
                         f"\n--- stderr ---\n{(proc.stderr or '')[-tail:]}")


def nnunet_env(root, prefix: str = "") -> Dict[str, str]:
    """``nnUNet_raw`` / ``nnUNet_preprocessed`` / ``nnUNet_results`` as ``root/<prefix>raw`` etc.,
    created; the dict goes on top of ``os.environ`` for the commands that read them."""
    env = {f"nnUNet_{name}": str(Path(root) / f"{prefix}{name}") for name in NNUNET_FOLDERS}
    for folder in env.values():
        Path(folder).mkdir(parents=True, exist_ok=True)
    return env


def tool(name) -> str:
    """The path of this environment's console script ``name`` (``name`` itself when it is a path or
    not installed here, for any other executable)."""
    name = str(name)
    if not os.path.isabs(name) and (BIN / name).exists():
        return str(BIN / name)
    return name


def run_tool(cmd: Sequence[object], env: Optional[Dict[str, str]] = None, timeout: Optional[float] = None,
             check: bool = False, log: Optional[Callable[[str], None]] = None) -> subprocess.CompletedProcess:
    """Run ``cmd`` (its first word through :func:`tool`) with ``env`` on top of ``os.environ``,
    capturing its output; with ``check`` a non-zero exit raises :class:`CommandFailed`."""
    cmd = [str(c) for c in cmd]
    cmd[0] = tool(cmd[0])
    if log:
        log(f"$ {' '.join(cmd)}")
    proc = subprocess.run(cmd, env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise CommandFailed(cmd, proc)
    return proc


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


def budget_train(argv: Sequence[str], label: str = "budget") -> None:
    """``nnUNetv2_train <argv>`` with ``BUS_NNUNET_NUM_EPOCHS`` / ``_NUM_ITERATIONS`` /
    ``_NUM_VAL_ITERATIONS`` applied to EVERY trainer class (bus-nnunet's trainers read them
    themselves, nnU-Net's do not), so all trainers of a comparison get the same budget.
    ``BUS_NNUNET_TORCH_THREADS`` pins torch's CPU threads."""
    import torch
    from nnunetv2.run.run_training import run_training_entry
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from bus_nnunet.schedule import schedule_overrides
    overrides = schedule_overrides()  # the trainers' own check: a bad value stops before nnU-Net starts
    original_init = nnUNetTrainer.__init__

    # nnU-Net records its __init__ arguments by signature (for checkpoints), so keep the exact one
    def init_with_budget(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                         device: torch.device = torch.device("cuda")):
        original_init(self, plans, configuration, fold, dataset_json, device)
        for attr, (value, source) in overrides.items():
            setattr(self, attr, value)
            self.print_to_log_file(f"{label}: {source} -> {attr}")

    nnUNetTrainer.__init__ = init_with_budget
    threads = os.environ.get("BUS_NNUNET_TORCH_THREADS")
    if threads:
        # nnU-Net sets cpu_count() threads on CPU; on a shared machine every parallel op then waits
        # for a busy core (~10x slower)
        torch.set_num_threads(int(threads))
        torch.set_num_threads = lambda n: None
    sys.argv = ["nnUNetv2_train", *argv]
    run_training_entry()


# -- process memory (Linux /proc; ru_maxrss where /proc/self/status is missing) ----------------------
def rss_bytes() -> int:
    """This process's resident set size now."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) of this process (Linux >= 4.0: clear_refs 5);
    False where that is not allowed, and the peak then includes everything before."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    """This process's peak resident set size (VmHWM; ru_maxrss, KiB on Linux, as the fallback)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
