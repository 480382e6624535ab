"""Registration hook, registry, recipes, ultrasound augmentation and the base trainer's contract."""
import math
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from bus_nnunet import _autoregister_hook, augmentation, registration
from bus_nnunet.network_architectures import _registry
from bus_nnunet.recipes import EpochLRScheduler, Recipe, build_optimizer, lr_at_epoch

REPO = Path(__file__).resolve().parents[1]


# -- registration --------------------------------------------------------------------------------
def test_hook_appends_entry_folder_and_keeps_user_entries(tmp_path):
    env = {"nnUNet_extTrainer": str(tmp_path)}
    folder = _autoregister_hook.register(env)
    parts = env["nnUNet_extTrainer"].split(os.pathsep)
    assert parts == [str(tmp_path), folder]
    assert Path(folder, "bus_nnunet_trainers.py").is_file()
    _autoregister_hook.register(env)  # idempotent
    assert env["nnUNet_extTrainer"].split(os.pathsep) == parts
    assert _autoregister_hook.register({"BUS_NNUNET_NO_AUTOREGISTER": "1"}) is None


def test_new_python_process_has_registration_from_startup_hook(tmp_path):
    """The installed .pth hook runs at interpreter start: no manual step for nnUNetv2_* commands."""
    env = {**os.environ, "nnUNet_extTrainer": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", "import os; print(os.environ['nnUNet_extTrainer'])"],
                         env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert out.split(os.pathsep) == [str(tmp_path), registration.trainer_entry_folder()]


def test_nnunet_lookup_finds_trainer_and_schedule_variant():
    registration.ensure_registered()
    for name in ("nnUNetTrainerUS", "nnUNetTrainerUS_250epochs"):
        found = registration.lookup_trainer(name)
        assert found["error"] is None and found["module"].startswith("bus_nnunet.trainers")
    assert registration.lookup_trainer("NoSuchTrainerXYZ")["error"]


def test_wheel_carries_packages_and_startup_hook(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path), str(REPO)], check=True, capture_output=True)
    wheel = next(tmp_path.glob("bus_nnunet-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"bus_nnunet_autoregister.pth", "_bus_nnunet_hook.py", "bus_nnunet/trainers/base.py",
            "bus_nnunet/_nnunet_ext/bus_nnunet_trainers.py", "bus_nnunet/network_architectures/_registry.py",
            "bus_nnunet/dataset_conversion/__init__.py"} <= names
    assert not any(n.startswith(("trainers/", "network_architectures/")) for n in names)
    assert zipfile.ZipFile(wheel).read("bus_nnunet_autoregister.pth").decode().strip() == "import _bus_nnunet_hook"


def test_doctor_is_green_here():
    proc = subprocess.run([sys.executable, "-m", "bus_nnunet.cli", "doctor"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "nnU-Net finds nnUNetTrainerUS" in proc.stdout


def test_doctor_fails_with_fix_when_registration_is_off():
    env = {**os.environ, "BUS_NNUNET_NO_AUTOREGISTER": "1"}
    env.pop("nnUNet_extTrainer", None)
    proc = subprocess.run([sys.executable, "-m", "bus_nnunet.cli", "doctor", "--quick"], env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 1
    assert "export nnUNet_extTrainer=" in proc.stdout


# -- registry ------------------------------------------------------------------------------------
@pytest.fixture
def tiny_network():
    """A throwaway registered network (one conv), removed afterwards."""

    class Tiny(nn.Module):
        def __init__(self, in_channels, num_classes, deep_supervision):
            super().__init__()
            self.deep_supervision = deep_supervision
            self.conv = nn.Conv2d(in_channels, num_classes, 3, padding=1)
            self.aux = nn.Conv2d(in_channels, num_classes, 1)

        def forward(self, x):
            out = self.conv(x)
            if self.deep_supervision:
                return [out, self.aux(nn.functional.avg_pool2d(x, 2))]
            return out

    @_registry.register_model(name="_test_tiny", size_divisor=16, min_size=32, deep_supervision_strides=(1, 2))
    def _test_tiny(in_channels=1, num_classes=2, deep_supervision=False, **kwargs):
        return Tiny(in_channels, num_classes, deep_supervision)

    yield "_test_tiny"
    _registry._MODELS.pop("_test_tiny")


def test_a_new_network_module_registers_itself(tmp_path, monkeypatch):
    """A module added to the network package (here: a folder added to its search path) is found on
    the first lookup, with no list of modules to edit."""
    from bus_nnunet import network_architectures as package
    extra = tmp_path / "more_networks"
    extra.mkdir()
    (extra / "toynet.py").write_text(
        "from torch import nn\n"
        "from bus_nnunet.network_architectures._registry import register_model\n\n\n"
        "@register_model(size_divisor=8)\n"
        "def _toynet_for_test(in_channels=1, num_classes=2, deep_supervision=False, **kwargs):\n"
        "    return nn.Conv2d(in_channels, num_classes, 1)\n")
    monkeypatch.setattr(package, "__path__", [*package.__path__, str(extra)])
    monkeypatch.delitem(sys.modules, f"{package.__name__}.toynet", raising=False)
    monkeypatch.delitem(_registry._MODELS, "_toynet_for_test", raising=False)
    try:
        assert "_toynet_for_test" in _registry.list_models()
        assert _registry.create_model("_toynet_for_test", in_channels=3).in_channels == 3
    finally:
        _registry._MODELS.pop("_toynet_for_test", None)
        sys.modules.pop(f"{package.__name__}.toynet", None)


def test_a_broken_network_module_hides_no_other_network(tmp_path, monkeypatch):
    """Issue 27 §7: a network module that fails to import is named with its error (registry lookups,
    ``bus-nnunet doctor``) and every other network still registers."""
    from bus_nnunet import network_architectures as package
    from bus_nnunet.commands.doctor import _check_networks
    extra = tmp_path / "broken_networks"
    extra.mkdir()
    (extra / "brokennet.py").write_text("import a_package_that_is_not_installed_anywhere\n")
    full = f"{package.__name__}.brokennet"
    monkeypatch.setattr(package, "__path__", [*package.__path__, str(extra)])
    monkeypatch.setattr(_registry, "UNAVAILABLE", {})
    with pytest.warns(UserWarning, match=f"{full} are unavailable: ModuleNotFoundError"):
        names = _registry.list_models()
    assert {"acsnet", "anatosegnet", "attention_unet", "scrnet", "ssnet"} <= set(names)
    assert _registry.UNAVAILABLE == {full: "ModuleNotFoundError: No module named "
                                           "'a_package_that_is_not_installed_anywhere'"}
    with pytest.raises(KeyError, match=f"{full} failed to import .ModuleNotFoundError"):
        _registry.model_info("brokennet")
    problems, passed = [], []
    _check_networks(passed.append, lambda msg, fix: problems.append((msg, fix)))
    assert problems == [(f"network module {full} failed to import: {_registry.UNAVAILABLE[full]}",
                         "see the error; reinstall bus-nnunet")]
    assert passed and "acsnet" in passed[0]


def test_snap_patch_size_rules(tiny_network):
    assert _registry.snap_patch_size(tiny_network, (64, 100)) == (64, 96)
    assert _registry.snap_patch_size(tiny_network, (20, 57)) == (32, 64)  # min_size, then nearest multiple
    with pytest.raises(KeyError, match="unknown network"):
        _registry.model_info("no_such_network")
    with pytest.raises(ValueError, match="registered twice"):
        _registry.register_model(name=tiny_network)(lambda **kw: None)


def test_build_network_architecture_from_the_plans(tiny_network):
    from bus_nnunet.trainers.base import BusNetworkTrainer

    class TinyTrainer(BusNetworkTrainer):
        network_name = tiny_network

    class FakeConfig:
        patch_size = [64, 96]

    net = TinyTrainer.build_network_architecture(None, FakeConfig(), 3, 2, False)
    assert net.conv.in_channels == 3 and not net.deep_supervision
    with_ds = TinyTrainer.build_network_architecture(None, FakeConfig(), 1, 2, True)
    assert with_ds.conv.in_channels == 1 and with_ds.deep_supervision
    assert set(net.state_dict()) == set(with_ds.state_dict())  # DS flag does not change the weights

    class BadConfig:
        patch_size = [64, 90]

    with pytest.raises(ValueError, match="nearest accepted: \\[64, 96\\]"):
        TinyTrainer.build_network_architecture(None, BadConfig(), 1, 2, False)


def test_trainer_snaps_patch_into_saved_plans_and_wires_deep_supervision(tiny_network, planned_dataset, tmp_path,
                                                                          monkeypatch):
    """Instantiated directly (nnU-Net's API route): the snapped patch is what plans.json will hold."""
    from bus_nnunet.trainers.base import BusNetworkTrainer

    class TinyTrainer(BusNetworkTrainer):
        network_name = tiny_network
        recipe = Recipe(optimizer="adam", lr=1e-3, schedule="cosine", num_epochs=10)

    def unsnapped_patch(plans):
        plans["configurations"]["2d"]["patch_size"] = [64, 72]  # not a multiple of 16

    trainer = planned_dataset.build_trainer(TinyTrainer, tmp_path, monkeypatch, edit_plans=unsnapped_patch)
    assert trainer.configuration_manager.patch_size == [64, 64]
    assert trainer.plans_manager.plans["configurations"]["2d"]["patch_size"] == [64, 64]
    assert trainer.num_epochs == 10 and trainer.initial_lr == 1e-3
    assert trainer._get_deep_supervision_scales() == [[1.0, 1.0], [0.5, 0.5]]
    trainer.initialize()
    assert isinstance(trainer.optimizer, torch.optim.Adam)
    out = trainer.network(torch.zeros(2, 1, 64, 64))
    assert [o.shape[-1] for o in out] == [64, 32]
    trainer.set_deep_supervision_enabled(False)
    assert trainer.network(torch.zeros(1, 1, 64, 64)).shape == (1, 2, 64, 64)
    target = [torch.zeros(2, 1, 64, 64), torch.zeros(2, 1, 32, 32)]
    trainer.set_deep_supervision_enabled(True)
    assert torch.isfinite(trainer.loss(trainer.network(torch.zeros(2, 1, 64, 64)), target))
    # the DS loss weights are 1, 1/2 normalised -- the auxiliary output is not silently dropped
    assert np.allclose(trainer.loss.weight_factors, [2 / 3, 1 / 3])


# -- recipes -------------------------------------------------------------------------------------
def test_lr_schedules_are_pure_functions_of_epoch():
    poly = Recipe(lr=0.01)
    assert lr_at_epoch(poly, 0, 100) == 0.01
    assert math.isclose(lr_at_epoch(poly, 50, 100), 0.01 * 0.5 ** 0.9)
    cos = Recipe(lr=1e-4, schedule="cosine", min_lr=1e-6)
    assert math.isclose(lr_at_epoch(cos, 50, 100), 1e-6 + 0.5 * (1e-4 - 1e-6))
    step = Recipe(lr=1e-3, schedule="step", step_at=(0.3, 0.6), step_gamma=0.1)
    assert math.isclose(lr_at_epoch(step, 29, 100), 1e-3) and math.isclose(lr_at_epoch(step, 60, 100), 1e-5)
    assert math.isclose(lr_at_epoch(step, 2, 10), 1e-3) and math.isclose(lr_at_epoch(step, 3, 10), 1e-4)
    warm = Recipe(lr=1e-3, schedule="constant", warmup_fraction=0.4)
    assert [lr_at_epoch(warm, e, 10) for e in range(5)] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3])
    with pytest.raises(ValueError, match="fractions"):
        Recipe(schedule="step", step_at=(0.8, 0.4))
    with pytest.raises(ValueError):
        lr_at_epoch(Recipe(schedule="nope"), 0, 10)

    opt = build_optimizer(cos, [nn.Parameter(torch.zeros(1))])
    sched = EpochLRScheduler(opt, cos, 100)
    sched.step(50)  # what nnU-Net does after --c at epoch 50: same lr as an uninterrupted run
    assert math.isclose(opt.param_groups[0]["lr"], lr_at_epoch(cos, 50, 100))


# -- augmentation --------------------------------------------------------------------------------
def test_depth_attenuation_darkens_with_depth_and_keeps_floor():
    img = torch.ones(1, 8, 4)
    img[0, 0, 0] = 0.0  # the floor
    out = augmentation.DepthAttenuationTransform()._apply_to_image(img.clone(), alpha=1.0)
    rows = out[0, :, 1]
    assert torch.all(rows[1:] < rows[:-1])  # monotone along depth (rows)
    assert torch.allclose(rows[-1], torch.tensor(math.exp(-1.0)))
    assert out[0, 0, 0] == 0.0
    assert torch.allclose(out[0, :, 1], out[0, :, 3])  # no lateral change


def test_speckle_is_unit_mean_multiplicative_and_gain_scales_around_floor():
    torch.manual_seed(0)
    img = torch.full((1, 200, 200), 3.0)
    img[0, 0, 0] = -1.0
    out = augmentation.SpeckleNoiseTransform()._apply_to_image(img.clone(), looks=10.0)
    above = out + 1.0
    assert abs(above[0, 1:].mean().item() / 4.0 - 1.0) < 0.01
    assert abs(above[0, 1:].var().item() / 16.0 - 0.1) < 0.01  # Gamma(L, 1/L): variance 1/L
    gained = augmentation.GainTransform()._apply_to_image(img.clone(), gain=0.5)
    assert gained[0, 0, 0] == -1.0 and torch.allclose(gained[0, 5, 5], torch.tensor(1.0))


def test_us_trainer_mirrors_laterally_only_and_limits_rotation(planned_dataset, tmp_path, monkeypatch):
    from bus_nnunet.trainers import nnUNetTrainerUS
    from batchgeneratorsv2.transforms.spatial.mirroring import MirrorTransform

    trainer = planned_dataset.build_trainer(nnUNetTrainerUS, tmp_path, monkeypatch)
    rotation, dummy, initial, mirror = trainer.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
    assert mirror == (1,) and trainer.inference_allowed_mirroring_axes == (1,)
    assert rotation[1] == pytest.approx(math.radians(15))
    transforms = trainer.get_training_transforms(trainer.configuration_manager.patch_size, rotation, None, mirror,
                                                 False).transforms
    kinds = [type(getattr(t, "transform", t)).__name__ for t in transforms]
    assert {"SpeckleNoiseTransform", "GainTransform", "DepthAttenuationTransform"} <= set(kinds)
    mirrors = [t for t in transforms if isinstance(t, MirrorTransform)]
    assert len(mirrors) == 1 and tuple(mirrors[0].allowed_axes) == (1,)


def test_train_step_clips_gradients_at_the_recipe_norm(tiny_network, planned_dataset, tmp_path, monkeypatch):
    from bus_nnunet.trainers.base import BusNetworkTrainer

    class ClippedTrainer(BusNetworkTrainer):
        network_name = tiny_network
        deep_supervision = False
        recipe = Recipe(optimizer="sgd", lr=1.0, momentum=0.0, nesterov=False, weight_decay=0.0, grad_clip=1e-3)

    trainer = planned_dataset.build_trainer(ClippedTrainer, tmp_path, monkeypatch)
    trainer.initialize()
    before = [p.detach().clone() for p in trainer.network.parameters()]
    batch = {"data": torch.randn(2, 1, 64, 64) * 10, "target": (torch.rand(2, 1, 64, 64) > 0.5).float()}
    trainer.train_step(batch)
    step = torch.sqrt(sum(((p.detach() - b) ** 2).sum() for p, b in zip(trainer.network.parameters(), before)))
    assert step.item() == pytest.approx(1e-3, rel=1e-3)  # lr 1 x clipped gradient norm
