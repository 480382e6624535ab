"""The README's main command: `bus-nnunet demo` runs the whole pipeline (quick profile here; the
full profile, which must show learning, is what `make demo` runs)."""
import json
import subprocess
import sys
from pathlib import Path


def test_demo_quick_runs_end_to_end_and_refuses_to_overwrite(tmp_path):
    out = tmp_path / "demo"
    cmd = [str(Path(sys.executable).parent / "bus-nnunet"), "demo", "--quick", "-o", str(out), "--device", "cpu"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**__import__("os").environ,
                                                                   "nnUNet_def_n_proc": "1"})
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    result = json.loads((out / "result.json").read_text())
    assert result["test_cases"] == 3 and 0.0 <= result["mean_dice"] <= 1.0
    assert (out / "overlays.png").is_file() and (out / "report.md").read_text().startswith("# bus-nnunet demo")
    assert (out / "evaluation" / "per_case.csv").is_file()
    again = subprocess.run(cmd, capture_output=True, text=True)
    assert again.returncode == 1 and "--overwrite" in again.stderr
