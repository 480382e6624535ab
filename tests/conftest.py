"""Shared fixtures.

* ``shared_data`` -- ``../shared/data`` beside the checkout; tests that need it skip cleanly when
  it is absent (a user's fresh clone).
* ``nnunet_env`` -- fresh nnUNet_raw / nnUNet_preprocessed / nnUNet_results folders for one test,
  set in ``os.environ`` and returned as a dict for subprocesses.
* every test (and the nnU-Net commands it starts) sees an empty pretrained-weights cache
  (``BUS_NNUNET_WEIGHTS_DIR``), never the user's.
* ``planned_dataset`` -- one small synthetic dataset, planned and preprocessed by the real
  ``nnUNetv2_plan_and_preprocess`` once per session; trainer tests train on it with
  ``_nnunet.train_cli`` (each test gets its own results folder).
* ``trained_us`` -- ``(dataset, env)`` with nnUNetTrainerUS trained on it for folds 0 (``--npz``)
  and 1 by ``nnUNetv2_train``: a real model folder for the commands that use one.
"""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import _nnunet  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(autouse=True, scope="session")
def _empty_weights_cache(tmp_path_factory):
    import os
    mp = pytest.MonkeyPatch()
    mp.setenv("BUS_NNUNET_WEIGHTS_DIR", str(tmp_path_factory.mktemp("empty_weights_cache")))
    for var in ("BUS_NNUNET_PRETRAINED",):
        mp.delenv(var, raising=False)
    yield os.environ["BUS_NNUNET_WEIGHTS_DIR"]
    mp.undo()


@pytest.fixture(scope="session")
def shared_data():
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present (fresh clone): real-data test skipped")
    return SHARED_DATA


@pytest.fixture
def nnunet_env(tmp_path, monkeypatch):
    env = _nnunet.make_env(tmp_path)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return env


@pytest.fixture(scope="session")
def planned_dataset(tmp_path_factory):
    return _nnunet.plan_synthetic_dataset(tmp_path_factory.mktemp("nnunet_synthetic"))


@pytest.fixture(scope="session")
def trained_us(planned_dataset, tmp_path_factory):
    ds = planned_dataset
    env = ds.results_env(tmp_path_factory.mktemp("trained_us"))
    _nnunet.train_cli(ds, env, "nnUNetTrainerUS", fold=0, extra=["--npz"])
    _nnunet.train_cli(ds, env, "nnUNetTrainerUS", fold=1)
    return ds, env
