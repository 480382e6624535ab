"""Real subprocesses killed at a chosen point, for the recovery tests."""
import signal
import subprocess
import sys


def sigkill_when_printed(script: str, *argv, line: str) -> None:
    """Run ``python -c script argv...`` and SIGKILL it as soon as it prints ``line``."""
    proc = subprocess.Popen([sys.executable, "-c", script, *map(str, argv)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == line
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()
