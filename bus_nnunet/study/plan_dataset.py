"""``python -m bus_nnunet.study.plan_dataset ID CONFIGURATION PLANNER PLANS PROCESSES [BATCH]``: one
dataset planned and preprocessed by ``nnUNetv2_plan_and_preprocess -pl PLANNER``, and, for a
smoke study's ``[schedule] batch_size``, a copy of the plans named ``<PLANS>_bs<BATCH>`` with only
the configuration's batch size changed (same ``data_identifier``: the same preprocessed data)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from bus_nnunet.tool_runner import tool
from bus_nnunet.study.config import batch_plans_name


def write_batch_plans(plans_file: Path, configuration: str, batch_size: int) -> Path:
    from bus_nnunet.io_utils import atomic_write_text
    plans = json.loads(plans_file.read_text())
    plans["plans_name"] = batch_plans_name(plans["plans_name"], batch_size)
    plans["configurations"][configuration]["batch_size"] = batch_size
    target = plans_file.with_name(plans["plans_name"] + ".json")
    atomic_write_text(target, json.dumps(plans, indent=2))
    return target


def main(argv) -> int:
    dataset_id, configuration, planner, plans, processes = argv[:5]
    batch_size = int(argv[5]) if len(argv) > 5 and int(argv[5]) else 0
    rc = subprocess.call([tool("nnUNetv2_plan_and_preprocess"), "-d", dataset_id, "-c", configuration, "-pl", planner,
                          "-np", processes, "--verify_dataset_integrity", "--no_pbar"])
    if rc or not batch_size:
        return rc
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
    from nnunetv2.paths import nnUNet_preprocessed
    plans_file = Path(str(nnUNet_preprocessed)) / maybe_convert_to_dataset_name(int(dataset_id)) / f"{plans}.json"
    print(f"batch size {batch_size}: {write_batch_plans(plans_file, configuration, batch_size)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
