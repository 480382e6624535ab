"""Running a console script of *this* environment (``nnUNetv2_train``, ``bus-nnunet``), so a run
never picks up another install on ``PATH``: what the study, the tests, the benchmarks and the demo
use to start nnU-Net's and bus-nnunet's commands."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence

BIN = Path(sys.executable).parent


class CommandFailed(RuntimeError):
    """A command run with ``check=True`` exited non-zero; the message carries its output's tail."""

    def __init__(self, cmd: Sequence[str], proc: subprocess.CompletedProcess, tail: int = 6000):
        self.returncode, self.stdout, self.stderr = proc.returncode, proc.stdout, proc.stderr
        super().__init__(f"{' '.join(cmd)} exited {proc.returncode}\n--- stdout ---\n{(proc.stdout or '')[-tail:]}"
                         f"\n--- stderr ---\n{(proc.stderr or '')[-tail:]}")


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
