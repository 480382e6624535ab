"""Pretrained weights: the one loading path, the shared cache (`bus-nnunet weights`), and what trainers
load. Nothing reaches the network: `fetch` is served by a fake Hub download that hands out a checkpoint
saved from a randomly initialised timm model."""
import json
import os
from pathlib import Path

import pytest
import torch

import _nnunet
from bus_nnunet import weights
from bus_nnunet.cli import main
from bus_nnunet.errors import UserError
from bus_nnunet.network_architectures import create_model, model_info
from bus_nnunet.network_architectures._pretrained import PretrainedMismatchError, read_state_dict


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "weights_cache"
    monkeypatch.setenv(weights.WEIGHTS_DIR_ENV, str(folder))
    for env in ("BUS_NNUNET_PRETRAINED", "BUS_NNUNET_RESNET18", "BUS_NNUNET_TIMM_RESNET18"):
        monkeypatch.delenv(env, raising=False)
    return folder


def _timm_checkpoint(path: Path, arch: str, seed: int = 0, safetensors: bool = False) -> dict:
    """A full timm classifier (head included, as downloaded), randomly initialised, saved at ``path``."""
    import timm
    torch.manual_seed(seed)
    state = {k: v.contiguous() for k, v in timm.create_model(arch, pretrained=False).state_dict().items()}
    if safetensors:
        from safetensors.torch import save_file
        save_file(state, str(path))
    else:
        torch.save(state, path)
    return state


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("r18") / "my_resnet18.pth"
    return path, _timm_checkpoint(path, "resnet18", seed=7)


# -- the one loading path ------------------------------------------------------------------------------
def test_read_state_dict_unwraps_and_strips_prefixes(tmp_path):
    t = torch.ones(2)
    torch.save({"state_dict": {"module._orig_mod.conv1.weight": t, "step": 3}, "epoch": 1}, tmp_path / "a.pth")
    assert list(read_state_dict(tmp_path / "a.pth")) == ["conv1.weight"]
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(PretrainedMismatchError, match="junk.pth: not a readable PyTorch checkpoint"):
        read_state_dict(tmp_path / "junk.pth")


@pytest.mark.parametrize("in_channels", [1, 2, 3, 4])
def test_stem_adapted_with_timm_for_any_channel_count(resnet18_file, in_channels):
    from timm.models import adapt_input_conv
    path, state = resnet18_file
    net = create_model("acsnet", in_channels=in_channels)
    report = model_info("acsnet").pretrained[0].load(net, str(path))  # the registry entry's loader
    expected = adapt_input_conv(in_channels, state["conv1.weight"].clone())
    assert torch.equal(net.encoder.conv1.weight, expected)
    if in_channels == 1:
        assert torch.equal(expected, state["conv1.weight"].sum(1, keepdim=True))
    if in_channels == 2:  # timm's rule: RGB repeated to 2 channels, scaled by 3/2
        assert torch.allclose(expected, state["conv1.weight"][:, :2] * 1.5)
    assert ("folded from 3 to" in str(report)) == (in_channels != 3)
    # 100 tensors (BatchNorm counters not counted); parameters exclude the running statistics
    n_params = sum(p.numel() for p in net.encoder.parameters())
    assert (report.tensors, report.expected, report.parameters) == (100, 100, n_params)


def test_mismatch_names_file_and_first_keys_and_loads_nothing(tmp_path):
    import timm
    path = tmp_path / "r34.pth"
    torch.save(timm.create_model("resnet34", pretrained=False).state_dict(), path)
    net = create_model("acsnet", in_channels=1)
    before = {k: v.clone() for k, v in net.encoder.state_dict().items()}
    with pytest.raises(PretrainedMismatchError) as err:
        model_info("acsnet").pretrained[0].load(net, str(path))
    msg = str(err.value)
    assert msg.startswith(f"{path} does not fit: not a ResNet-18 checkpoint")
    assert "96 unexpected keys (first: layer1.2.conv1.weight, layer1.2.bn1.weight" in msg  # resnet34's extra blocks
    assert "resnet18.tv_in1k" in msg  # the fix
    assert all(torch.equal(v, before[k]) for k, v in net.encoder.state_dict().items())


# -- cache: import, list, hash check -------------------------------------------------------------------
def test_import_list_hash_check_and_refusals(cache, resnet18_file, tmp_path, capsys):
    path, state = resnet18_file
    assert main(["weights", "list", "--json"]) == 0
    before = json.loads(capsys.readouterr().out)
    r18 = next(e for e in before["weights"] if e["weights"] == "resnet18.tv_in1k")
    assert before["cache"] == str(cache) and not r18["cached"] and r18["license"] == "bsd-3-clause"
    assert sorted(r18["networks"]) == ["acsnet", "attention_unet"]

    assert main(["weights", "import", str(path), "--as", "resnet18.tv_in1k"]) == 0
    out = capsys.readouterr().out
    assert "fits acsnet: loaded 100/100 ResNet-18 tensors" in out and "fits attention_unet/resnet18" in out
    cached = cache / "resnet18.tv_in1k.pth"
    record = json.loads((cache / "resnet18.tv_in1k.json").read_text())
    assert record["sha256"] == weights.sha256_of(path) == weights.sha256_of(cached)
    assert record["source"] == f"import:{path}" and cached.read_bytes() == path.read_bytes()

    assert main(["weights", "list"]) == 0
    text = capsys.readouterr().out
    line = next(l for l in text.splitlines() if l.startswith("resnet18.tv_in1k"))
    assert "cached" in line and record["sha256"] in line and str(cached) in line
    acs = next(l for l in text.splitlines() if l.startswith("ACSNetTrainer"))
    assert "$BUS_NNUNET_RESNET18" in acs and acs.rstrip().endswith("cache")
    r = weights.resolve("resnet18.tv_in1k", "BUS_NNUNET_RESNET18")
    assert (r.state, r.path, r.sha256) == ("cache", str(cached), record["sha256"])

    # an existing entry is never replaced without --overwrite; a wrong checkpoint is never written
    assert main(["weights", "import", str(path), "--as", "resnet18.tv_in1k"]) == 1
    assert "already in the cache" in capsys.readouterr().err
    wrong = tmp_path / "densenet.pth"
    _timm_checkpoint(wrong, "densenet121")
    assert main(["weights", "import", str(wrong), "--as", "resnet18.tv_in1k", "--overwrite"]) == 1
    err = capsys.readouterr().err
    assert f"{wrong} does not fit: not a ResNet-18" in err and "features.conv0.weight" in err
    assert cached.read_bytes() == path.read_bytes()
    assert main(["weights", "import", str(wrong), "--as", "densenet121"]) == 1
    assert "unknown weights 'densenet121'; known: densenet121.tv_in1k" in capsys.readouterr().err
    assert not list(cache.glob(".*"))  # no temporary files left behind

    # the hash check: an altered file is not silently used
    with open(cached, "r+b") as f:
        f.seek(1000)
        f.write(b"\x00\x01\x02")
    r = weights.resolve("resnet18.tv_in1k", "BUS_NNUNET_RESNET18")
    assert r.state == "missing" and "altered or truncated" in r.problem and "--overwrite" in r.problem
    assert main(["weights", "list"]) == 0
    assert any(l.startswith("resnet18.tv_in1k") and "BROKEN" in l for l in capsys.readouterr().out.splitlines())
    assert main(["weights", "import", str(path), "--as", "resnet18.tv_in1k", "--overwrite"]) == 0
    assert weights.resolve("resnet18.tv_in1k", "BUS_NNUNET_RESNET18").state == "cache"


def _corrupt(path: Path):
    with open(path, "r+b") as f:
        f.seek(1000)
        f.write(b"\x00\x01\x02")


def test_broken_entry_names_both_ways_back_the_way_it_came_first(cache, resnet18_file, capsys):
    """Issue 22, item 9: one message (trainer, fetch, list, doctor) naming the file, the sha256 mismatch
    and both fixes, `weights import` first for weights that were imported."""
    path, _ = resnet18_file
    assert main(["weights", "import", str(path), "--as", "resnet18.tv_in1k"]) == 0
    cached = cache / "resnet18.tv_in1k.pth"
    _corrupt(cached)
    reimport = f"`bus-nnunet weights import {path} --as resnet18.tv_in1k --overwrite`"
    refetch = "`bus-nnunet weights fetch resnet18.tv_in1k --overwrite`"
    message = weights.resolve("resnet18.tv_in1k", "BUS_NNUNET_RESNET18").problem
    assert message.startswith(f"cached weights resnet18.tv_in1k: {cached} has sha256 ")
    assert "altered or truncated" in message and message.index(reimport) < message.index(refetch)
    capsys.readouterr()
    assert main(["weights", "fetch", "resnet18.tv_in1k"]) == 1
    assert message in capsys.readouterr().err
    assert main(["weights", "list"]) == 0
    assert message in capsys.readouterr().out
    main(["doctor", "--quick"])
    fix = next(line for line in capsys.readouterr().out.splitlines() if "fix:" in line and "resnet18" in line)
    assert fix.index(reimport) < fix.index(refetch)

    # weights that came from the Hub: fetch first, import still named
    weights.store("resnet18.tv_in1k", path, "huggingface:timm/resnet18.tv_in1k/model.safetensors", overwrite=True,
                  log=lambda *_: None)
    _corrupt(cached)
    message = weights.resolve("resnet18.tv_in1k", "BUS_NNUNET_RESNET18").problem
    assert message.index(refetch) < message.index("`bus-nnunet weights import FILE --as resnet18.tv_in1k --overwrite`")


def test_import_removes_partials_that_killed_imports_left(cache, resnet18_file, monkeypatch, capsys):
    """Issue 22, item 10: the temporary file of an import is a `.<name>.partial-<pid>-` partial, and an
    import removes those of processes no longer running (a running one's stays)."""
    import subprocess
    import sys
    path, _ = resnet18_file
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    cache.mkdir()
    killed = cache / f".resnet18.tv_in1k.partial-{ended.pid}-x1y2"
    killed.write_bytes(b"\0" * 4096)
    killed_fetch = cache / f".resnet18.tv_in1k.partial-{ended.pid}-z3"  # a fetch's staging folder
    killed_fetch.mkdir()
    (killed_fetch / "model.safetensors").write_bytes(b"\0" * 100)
    running = cache / ".resnet18.tv_in1k.partial-1-a1b2"  # pid 1 always runs
    running.write_bytes(b"\0")
    renamed = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst: (renamed.append(Path(src).name), real_replace(src, dst)))
    assert main(["weights", "import", str(path), "--as", "resnet18.tv_in1k"]) == 0
    out = capsys.readouterr().out
    assert not killed.exists() and not killed_fetch.exists() and running.exists()
    assert f"removed {killed}" in out and f"(process {ended.pid}, no longer running)" in out
    assert renamed[0].startswith(f".resnet18.tv_in1k.partial-{os.getpid()}-")  # what a killed import leaves
    assert sorted(p.name for p in cache.iterdir()) == [running.name, "resnet18.tv_in1k.json", "resnet18.tv_in1k.pth"]
    assert weights.cache_entry("resnet18.tv_in1k").ok


def test_resolution_order(cache, resnet18_file, monkeypatch, tmp_path):
    path, _ = resnet18_file
    r = weights.resolve("resnet18.tv_in1k", "BUS_NNUNET_RESNET18")
    assert (r.state, r.problem) == ("missing", None)
    monkeypatch.setenv("BUS_NNUNET_PRETRAINED", "require")
    assert "bus-nnunet weights fetch resnet18.tv_in1k" in weights.resolve("resnet18.tv_in1k", "X").problem
    monkeypatch.setenv("BUS_NNUNET_PRETRAINED", "maybe")
    with pytest.raises(UserError, match="choose one of auto, none, require"):
        weights.resolve("resnet18.tv_in1k", "X")
    monkeypatch.delenv("BUS_NNUNET_PRETRAINED")
    weights.store("resnet18.tv_in1k", path, "test", log=lambda *_: None)
    assert weights.resolve("resnet18.tv_in1k", "BUS_NNUNET_RESNET18").state == "cache"
    monkeypatch.setenv("BUS_NNUNET_RESNET18", str(tmp_path / "nope.pth"))
    r = weights.resolve("resnet18.tv_in1k", "BUS_NNUNET_RESNET18")  # the variable beats the cache
    assert r.state == "file" and "BUS_NNUNET_RESNET18=" in r.problem and "no such file" in r.problem
    monkeypatch.setenv("BUS_NNUNET_RESNET18", str(path))
    assert weights.resolve("resnet18.tv_in1k", "BUS_NNUNET_RESNET18").path == str(path)
    monkeypatch.setenv("BUS_NNUNET_PRETRAINED", "none")  # beats both
    assert weights.resolve("resnet18.tv_in1k", "BUS_NNUNET_RESNET18").state == "off"


# -- fetch, with the Hub replaced ----------------------------------------------------------------------
def test_fetch_downloads_through_hf_hub_and_verifies(cache, tmp_path, monkeypatch, capsys):
    import huggingface_hub
    served = tmp_path / "hub" / "model.safetensors"
    served.parent.mkdir()
    state = _timm_checkpoint(served, "efficientnet_b0", seed=3, safetensors=True)
    calls = []

    def fake_download(repo_id, filename, local_dir=None, **kwargs):
        calls.append((repo_id, filename))
        target = Path(local_dir) / filename
        target.write_bytes(served.read_bytes())
        return str(target)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    assert main(["weights", "fetch", "efficientnet_b0.ra_in1k"]) == 0
    assert calls == [("timm/efficientnet_b0.ra_in1k", "model.safetensors")]
    out = capsys.readouterr().out
    assert "fits attention_unet/efficientnet_b0: loaded" in out and "classifier dropped" in out
    entry = weights.cache_entry("efficientnet_b0.ra_in1k")
    assert entry.ok and entry.path == cache / "efficientnet_b0.ra_in1k.safetensors"
    assert entry.record["source"] == "huggingface:timm/efficientnet_b0.ra_in1k/model.safetensors"
    cached = read_state_dict(entry.path)
    assert cached.keys() == state.keys() and all(torch.equal(cached[k], state[k]) for k in state)
    assert not [p for p in cache.iterdir() if p.name.startswith(".")]  # staging removed

    assert main(["weights", "fetch", "efficientnet_b0.ra_in1k"]) == 0  # cached: no second download
    assert len(calls) == 1 and "already cached" in capsys.readouterr().out

    def offline(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    assert main(["weights", "fetch", "AttUNet_RD_Plain_BCE_Trainer"]) == 1  # a trainer's weights, by its name
    err = capsys.readouterr().err
    assert "downloading resnet18.tv_in1k from timm/resnet18.tv_in1k failed (OSError: no network)" in err
    assert "weights import FILE --as resnet18.tv_in1k" in err
    assert not (cache / "resnet18.tv_in1k.json").exists()
    assert main(["weights", "fetch"]) == 1 and "or --all" in capsys.readouterr().err


# -- trainers: warning, none, card, doctor -------------------------------------------------------------
def _instantiate(cls, planned_dataset, tmp_path, monkeypatch):
    for k, v in planned_dataset.results_env(tmp_path).items():
        monkeypatch.setenv(k, v)
    pre = Path(planned_dataset.env["nnUNet_preprocessed"]) / "Dataset990_SyntheticUS"
    plans = json.loads((pre / "nnUNetPlans.json").read_text())
    plans["continue_training"] = False  # nnU-Net's run_training adds this key
    return cls(plans, "2d", 0, json.loads((pre / "dataset.json").read_text()), torch.device("cpu"))


def test_trainer_warns_at_the_top_of_its_log_and_none_silences(cache, planned_dataset, tmp_path, monkeypatch):
    from bus_nnunet.trainers.anatosegnet import AnatoSegNetTrainer
    monkeypatch.delenv("BUS_NNUNET_RESNET50", raising=False)
    trainer = _instantiate(AnatoSegNetTrainer, planned_dataset, tmp_path / "a", monkeypatch)
    log = Path(trainer.log_file).read_text()
    warning = log.index("WARNING: AnatoSegNetTrainer was published with ImageNet-pretrained weights")
    assert "bus-nnunet weights fetch resnet50.tv_in1k" in log and "BUS_NNUNET_PRETRAINED=none" in log
    assert warning < log.index("AnatoSegNetTrainer: network 'anatosegnet'")  # before anything else of ours
    assert [r.state for _, r in trainer.pretrained_resolutions] == ["missing"]

    monkeypatch.setenv("BUS_NNUNET_PRETRAINED", "none")
    trainer = _instantiate(AnatoSegNetTrainer, planned_dataset, tmp_path / "b", monkeypatch)
    log = Path(trainer.log_file).read_text()
    assert "WARNING" not in log and "resnet50.tv_in1k: none (BUS_NNUNET_PRETRAINED=none" in log

    monkeypatch.setenv("BUS_NNUNET_PRETRAINED", "require")
    with pytest.raises(UserError, match="BUS_NNUNET_PRETRAINED=require but weights resnet50.tv_in1k"):
        _instantiate(AnatoSegNetTrainer, planned_dataset, tmp_path / "c", monkeypatch)


def test_trainer_card_and_doctor_report_the_cache_state(cache, resnet18_file, capsys, monkeypatch):
    path, _ = resnet18_file
    assert main(["trainers", "--show", "ACSNetTrainer", "--json"]) == 0
    card = json.loads(capsys.readouterr().out)
    assert card["pretrained_weights"] == [{"weights": "resnet18.tv_in1k", "slot": None, "env": "BUS_NNUNET_RESNET18",
                                           "state": "missing", "path": None, "sha256": None,
                                           "uses": weights.resolve("resnet18.tv_in1k", "X").describe()}]
    weights.store("resnet18.tv_in1k", path, "test", log=lambda *_: None)
    assert main(["trainers", "--show", "ACSNetTrainer"]) == 0
    text = capsys.readouterr().out
    assert f"resnet18.tv_in1k: cache {cache / 'resnet18.tv_in1k.pth'} (sha256 {weights.sha256_of(path)})" in text

    main(["doctor", "--quick"])
    out = capsys.readouterr().out
    section = out[out.index("pretrained weights"):]
    assert f"resnet18.tv_in1k cached: {cache / 'resnet18.tv_in1k.pth'}" in section
    assert "resnet50.tv_in1k not cached: AnatoSegNetTrainer" in section
    assert "bus-nnunet weights fetch resnet50.tv_in1k" in section


# -- nnUNetv2_train with cached weights ------------------------------------------------------------------
def test_nnunet_train_with_broken_cached_weights_stops_with_one_line(planned_dataset, resnet18_file, tmp_path):
    """Issue 22, item 9: nnUNetv2_train with altered cached weights prints the cache's message, no traceback."""
    path, _ = resnet18_file
    cache = tmp_path / "cache"
    env = {**planned_dataset.results_env(tmp_path), weights.WEIGHTS_DIR_ENV: str(cache), "BUS_NNUNET_RESNET18": "",
           "BUS_NNUNET_PRETRAINED": ""}
    weights.store("resnet18.tv_in1k", path, f"import:{path}", environ=env, log=lambda *_: None)
    _corrupt(cache / "resnet18.tv_in1k.pth")
    proc = _nnunet.run(["nnUNetv2_train", planned_dataset.dataset_id, "2d", 0, "-tr", "ACSNetTrainer",
                        "-device", "cpu"], env, check=False)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr + proc.stdout
    message = weights.resolve("resnet18.tv_in1k", "BUS_NNUNET_RESNET18", env).problem
    assert f"ACSNetTrainer: {message}" in proc.stderr
    assert f"`bus-nnunet weights import {path} --as resnet18.tv_in1k --overwrite`" in message



def test_nnunet_train_loads_cached_weights(planned_dataset, tmp_path):
    """A frozen-encoder trainer, with its weights only in the cache (imported, no variable set): the
    log says where they came from and that the network equals them after initialisation, and the
    final checkpoint's (frozen) encoders still hold exactly the cached tensors."""
    from timm.models import adapt_input_conv
    ds, trainer = planned_dataset, "AttUNet_RE_Plain_BCE_FrozenTrainer"
    cache = tmp_path / "cache"
    env = {**ds.results_env(tmp_path), weights.WEIGHTS_DIR_ENV: str(cache), "BUS_NNUNET_TIMM_RESNET18": "",
           "BUS_NNUNET_TIMM_EFFICIENTNET_B0": "", "BUS_NNUNET_PRETRAINED": "", "BUS_NNUNET_ALLOW_FROZEN_RANDOM": ""}
    refs = {}
    for arch, name, seed in (("resnet18", "resnet18.tv_in1k", 11), ("efficientnet_b0", "efficientnet_b0.ra_in1k", 12)):
        refs[arch] = _timm_checkpoint(tmp_path / f"{arch}.pth", arch, seed)
        _nnunet.run(["bus-nnunet", "weights", "import", tmp_path / f"{arch}.pth", "--as", name], env)
    proc = _nnunet.train_cli(ds, env, trainer)
    log = proc.stdout
    for arch, name in (("resnet18", "resnet18.tv_in1k"), ("efficientnet_b0", "efficientnet_b0.ra_in1k")):
        cached = cache / f"{name}.pth"
        assert f"pretrained {arch} {name}: cache {cached} (sha256 {weights.sha256_of(cached)})" in log
        assert f"pretrained {arch} weights from {cached} (cache): loaded" in log
    assert log.count("after initialisation all") == 2 and "WARNING" not in log
    saved = torch.load(_nnunet.model_folder(env, trainer) / "fold_0" / "checkpoint_final.pth", map_location="cpu",
                       weights_only=False)["network_weights"]
    for arch, ref in refs.items():
        stem = {"resnet18": "conv1.weight", "efficientnet_b0": "conv_stem.weight"}[arch]
        ref[stem] = adapt_input_conv(1, ref[stem])
        for key, value in ref.items():
            if key.split(".")[0] not in ("fc", "classifier"):
                assert torch.equal(saved[f"encoders.{arch}.{key}"], value), f"{arch}.{key}"
    assert os.environ.get(weights.WEIGHTS_DIR_ENV) != str(cache)  # the test's cache never leaked
