"""The ``BUS_NNUNET_NUM_*`` schedule variables: their names and their one checked reading.

bus-nnunet's trainers read them themselves, ``bus_nnunet.study.budget_train`` applies them to
nnU-Net's stock trainers, and the study sets them for its jobs.  Kept free of torch and nnU-Net so
that the study (and every ``bus-nnunet`` command that builds its parser) does not import them.
"""
from __future__ import annotations

import os
from typing import Dict, Tuple

#: nnU-Net 2.8's nnUNetTrainer.__init__ values (a test checks them against a real instance)
NNUNET_SCHEDULE_DEFAULTS = {"num_epochs": 1000, "num_iterations_per_epoch": 250, "num_val_iterations_per_epoch": 50}
SCHEDULE_ENV = {
    "num_epochs": "BUS_NNUNET_NUM_EPOCHS",
    "num_iterations_per_epoch": "BUS_NNUNET_NUM_ITERATIONS",
    "num_val_iterations_per_epoch": "BUS_NNUNET_NUM_VAL_ITERATIONS",
}


def schedule_overrides(environ=os.environ) -> Dict[str, Tuple[int, str]]:
    """``attr -> (value, "VARIABLE=value")`` for the ``BUS_NNUNET_NUM_*`` schedule variables that are set;
    a ValueError names a variable that is not an integer >= 1."""
    overrides = {}
    for attr, env in SCHEDULE_ENV.items():
        value = environ.get(env)
        if not value:
            continue
        try:
            number = int(value)
        except ValueError:
            raise ValueError(f"{env}={value!r} is not an integer") from None
        if number < 1:
            raise ValueError(f"{env}={value!r}: must be at least 1")
        overrides[attr] = (number, f"{env}={value}")
    return overrides
