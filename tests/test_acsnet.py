"""ACSNet: network shapes and parameter count, DCNv2 against a bilinear-sampling
reference, uncertainty loss weights, manifest labels, pretrained ResNet-18 loading, and the
multi-task trainer through nnU-Net's CLI with ``bus-nnunet classify``."""
import csv
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import _nnunet
from bus_nnunet.errors import UserError
from bus_nnunet.network_architectures import create_model
from bus_nnunet.network_architectures.acsnet import DeformConv2d, UncertaintyLossWeighting, deform_conv2d_sampling


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


# -- network ---------------------------------------------------------------------------------------
def test_forward_shapes_train_and_eval():
    torch.manual_seed(0)
    net = create_model("acsnet", in_channels=1, num_classes=2)
    x = torch.randn(2, 1, 32, 64)
    seg, cls = net(x, return_classification=True)
    assert seg.shape == (2, 2, 32, 64) and cls.shape == (2, 2)
    net.eval()
    with torch.no_grad():
        out = net(x)
        assert isinstance(out, torch.Tensor) and out.shape == (2, 2, 32, 64)  # plain forward: segmentation only
        assert torch.equal(out, net(x))  # deterministic in eval mode
        assert torch.allclose(net.forward_classification(x), net(x, return_classification=True)[1], atol=1e-6)
    three = create_model("acsnet", in_channels=3, num_classes=1, num_classification_classes=3)
    assert three.eval()(torch.randn(1, 3, 32, 32), return_classification=True)[1].shape == (1, 3)
    with pytest.raises(ValueError, match="divisible by 32"):
        net(torch.randn(1, 1, 48, 64))


def test_parameter_count_matches_reference():
    # reference configuration: RGB input, one logit map -> 31,824,945 parameters in use (released MyModel.py)
    net = create_model("acsnet", in_channels=3, num_classes=1)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert net.count_model_parameters() == 31_824_945
    assert count(net) == 31_824_945 + 2  # + the two learnable loss weights
    assert count(net.encoder) == 11_176_512
    assert [count(getattr(net, g)) for g in ("gate4", "gate3", "gate2", "gate1", "gate0")] == \
        [2_657_090, 664_994, 166_610, 41_834, 41_834]
    assert (count(net.dsa1), count(net.dsa2), count(net.classifier)) == (7_453_258, 1_957_194, 933_074)
    # nnU-Net default: grey input (conv1 loses 64*2*49 weights), 2 segmentation heads (+129)
    assert create_model("acsnet").count_model_parameters() == 31_824_945 - 64 * 2 * 49 + 129 == 31_818_802


# -- deformable convolution ------------------------------------------------------------------------
def deform_conv_reference(x, offset, mask, weight):
    """3x3 DCNv2, stride 1, padding 1, written with bilinear sampling (grid_sample, zeros outside)."""
    b, c, h, w = x.shape
    ys, xs = torch.meshgrid(torch.arange(h, dtype=x.dtype), torch.arange(w, dtype=x.dtype), indexing="ij")
    out = 0
    for k in range(9):
        dy, dx = k // 3 - 1, k % 3 - 1
        py = ys + dy + offset[:, 2 * k]       # torchvision layout: (dy_k, dx_k) at channels 2k, 2k+1
        px = xs + dx + offset[:, 2 * k + 1]
        grid = torch.stack([2 * px / (w - 1) - 1, 2 * py / (h - 1) - 1], dim=-1)
        sampled = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
        out = out + torch.einsum("oc,bchw->bohw", weight[:, :, k // 3, k % 3], sampled * mask[:, k:k + 1])
    return out


def test_deform_conv_matches_bilinear_reference_and_gradients():
    from torchvision.ops import deform_conv2d
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 7, 6, generator=g, dtype=torch.float64, requires_grad=True)
    # fractional offsets up to 2.5 px, some points land outside the image
    offset = (torch.rand(2, 18, 7, 6, generator=g, dtype=torch.float64) * 5 - 2.5).requires_grad_()
    mask = torch.rand(2, 9, 7, 6, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(4, 3, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    ours = deform_conv2d(x, offset, weight, None, padding=1, mask=mask)
    ref = deform_conv_reference(x, offset, mask, weight)
    assert torch.allclose(ours, ref, atol=1e-10)
    upstream = torch.randn(ours.shape, generator=g, dtype=torch.float64)
    grads = torch.autograd.grad((ours * upstream).sum(), (x, offset, mask, weight))
    ref_grads = torch.autograd.grad((ref * upstream).sum(), (x, offset, mask, weight))
    for name, a, b in zip(("input", "offset", "mask", "weight"), grads, ref_grads):
        assert torch.allclose(a, b, atol=1e-8), name
    # the module's CPU path (batched sampling + matmul) agrees with torchvision too
    fast = deform_conv2d_sampling(x, offset, mask, weight)
    assert torch.allclose(fast, ours, atol=1e-10)
    fast_grads = torch.autograd.grad((fast * upstream).sum(), (x, offset, mask, weight))
    for name, a, b in zip(("input", "offset", "mask", "weight"), fast_grads, grads):
        assert torch.allclose(a, b, atol=1e-8), name

    # the module: zero-initialised offset/mask predictors give a plain conv scaled by sigmoid(0) = 0.5
    module = DeformConv2d(3, 4).double()
    xs = torch.randn(1, 3, 5, 5, generator=g, dtype=torch.float64)
    assert torch.allclose(module(xs).double(), 0.5 * F.conv2d(xs, module.weight, padding=1), atol=1e-6)
    out = module(xs.requires_grad_())
    out.sum().backward()
    assert module.offset_conv.weight.grad.abs().sum() > 0 and module.mask_conv.weight.grad.abs().sum() > 0


# -- loss weights ----------------------------------------------------------------------------------
def test_uncertainty_loss_weighting():
    weighting = UncertaintyLossWeighting(2)
    seg, cls = torch.tensor(0.8), torch.tensor(0.4)
    value = weighting(seg, cls)
    assert value.item() == pytest.approx(0.5 * (0.8 + 0.4) + 2 * math.log(2))  # sigma = 1 at init
    value.backward()
    # d/dsigma [0.5 L / s^2 + log(1 + s^2)] at s = 1: -L + 1
    assert weighting.sigma.grad.tolist() == pytest.approx([1 - 0.8, 1 - 0.4])


# -- manifest labels -------------------------------------------------------------------------------
def _manifest(tmp_path, rows):
    path = tmp_path / "manifest.csv"
    path.write_text("case_id,class,split\n" + "".join(f"{c},{k},train\n" for c, k in rows))
    return path


def test_manifest_labels_and_clear_errors(tmp_path):
    from bus_nnunet.manifest import classification_labels  # the rule every classifying trainer uses
    path = _manifest(tmp_path, [("a", "malignant"), ("b", "Benign"), ("c", "normal"), ("d", ""), ("e", "")])
    names, labels = classification_labels(path, ["a", "b"])
    assert names == ["benign", "malignant"] and labels == {"a": 1, "b": 0}
    names, labels = classification_labels(path, ["a", "b", "c"])  # normal only when a training case is normal
    assert names == ["benign", "malignant", "normal"] and labels == {"a": 1, "b": 0, "c": 2}
    with pytest.raises(UserError, match=r"manifest .*manifest\.csv gives no class for 2 of the 3 training cases: d, e;"):
        classification_labels(path, ["a", "d", "e"])
    with pytest.raises(UserError, match=r"gives no class for any of the 2 training cases: d, e;"):
        classification_labels(path, ["d", "e"])
    path2 = _manifest(tmp_path, [("a", "birads4")])
    with pytest.raises(UserError, match="'a' has class 'birads4'"):
        classification_labels(path2, ["a"])


# -- pretrained encoder ----------------------------------------------------------------------------
@pytest.mark.parametrize("source", ["torchvision", "timm"])
def test_pretrained_resnet18_loading(tmp_path, source):
    from bus_nnunet.network_architectures import model_info
    torch.manual_seed(1)
    if source == "torchvision":
        import torchvision
        state = torchvision.models.resnet18(weights=None).state_dict()
    else:
        import timm
        state = timm.create_model("resnet18", pretrained=False).state_dict()
    path = tmp_path / "resnet18.pth"
    torch.save(state, path)
    net = create_model("acsnet", in_channels=1)
    load = model_info("acsnet").pretrained[0].load  # the registry entry's loader, as the trainer uses it
    report = str(load(net, str(path)))
    assert "loaded 100/100" in report and "conv1 folded from 3 to 1" in report and "fc.weight" in report
    assert torch.equal(net.encoder.conv1.weight, state["conv1.weight"].sum(1, keepdim=True))
    assert torch.equal(net.encoder.layer4[1].conv2.weight, state["layer4.1.conv2.weight"])
    bad = tmp_path / "bad.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, bad)
    with pytest.raises(UserError, match="not a ResNet-18"):
        load(net, str(bad))


# -- nnU-Net CLI -----------------------------------------------------------------------------------
def test_acsnet_trainer_cli_writes_classification_and_classify_command(planned_dataset, tmp_path):
    ds = planned_dataset
    env = ds.results_env(tmp_path)
    proc = _nnunet.train_cli(ds, env, "ACSNetTrainer")
    folder = _nnunet.model_folder(env, "ACSNetTrainer")
    log = proc.stdout
    assert "classification labels from" in log and "val classification (patches" in log

    manifest = {r["case_id"]: r["class"] for r in csv.DictReader(open(ds.raw / "manifest.csv"))}
    splits = json.loads((ds.root / "preprocessed" / ds.raw.name / "splits_final.json").read_text())
    rows = list(csv.DictReader(open(folder / "fold_0" / "validation" / "classification.csv")))
    assert list(rows[0]) == ["case_id", "true_class", "p_benign", "p_malignant", "predicted_class"]
    assert sorted(r["case_id"] for r in rows) == sorted(splits[0]["val"])
    for r in rows:
        assert r["true_class"] == manifest[r["case_id"]]
        p = np.array([float(r["p_benign"]), float(r["p_malignant"])])
        assert p.sum() == pytest.approx(1, abs=1e-5)
        assert r["predicted_class"] == ("benign", "malignant")[int(p.argmax())]
    assert (folder / "fold_0" / "validation" / "summary.json").is_file()  # nnU-Net's segmentation validation

    plans = json.loads((folder / "plans.json").read_text())
    assert plans["configurations"]["2d"]["classification_classes"] == ["benign", "malignant"]
    ckpt = torch.load(folder / "fold_0" / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    sigma = ckpt["network_weights"]["loss_weighting.sigma"]
    assert not torch.equal(sigma, torch.ones(2))  # trained by the optimiser, saved with the network
    n_params = len(ckpt["optimizer_state"]["param_groups"][0]["params"])
    assert n_params == len(ckpt["network_weights"]) - sum(1 for k in ckpt["network_weights"]
                                                            if "running_" in k or "num_batches" in k)
    assert "val_cls_auc" in ckpt["logging"]

    out = tmp_path / "classes.csv"
    proc = _nnunet.run(["bus-nnunet", "classify", "-i", ds.raw / "imagesTs", "-m", folder, "-f", "0", "-o", out,
                        "--manifest", ds.raw / "manifest.csv"], env)
    test_rows = list(csv.DictReader(open(out)))
    test_cases = sorted(p.name[:-len("_0000.png")] for p in (ds.raw / "imagesTs").glob("*_0000.png"))
    assert sorted(r["case_id"] for r in test_rows) == test_cases
    assert all(r["true_class"] == manifest[r["case_id"]] for r in test_rows)
    refused = _nnunet.run(["bus-nnunet", "classify", "-i", ds.raw / "imagesTs", "-m", folder, "-o", out], env,
                          check=False)
    assert refused.returncode == 1 and "--overwrite" in refused.stderr
    # ordinary files as predict reads them: an RGBA copy classifies as the grey original, a broken
    # file is named and skipped (exit 1) and the rest is classified
    from PIL import Image
    first = sorted((ds.raw / "imagesTs").glob("*_0000.png"))[0]
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    Image.open(first).convert("RGBA").save(mixed / "copy.png")
    (mixed / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    proc = _nnunet.run(["bus-nnunet", "classify", "-i", mixed, "-m", folder, "-f", "0", "-o", tmp_path / "m.csv"],
                       env, check=False)
    assert proc.returncode == 1 and "broken.jpg" in proc.stdout
    copy_row = next(csv.DictReader(open(tmp_path / "m.csv")))
    original = next(r for r in test_rows if r["case_id"] == first.name[:-len("_0000.png")])
    assert copy_row["case_id"] == "copy" and copy_row["p_malignant"] == original["p_malignant"]
    # several models (issue 23): weighted, a copy of the model averaged with it classifies as the
    # model does; models of other classes are refused, naming both
    import shutil
    from bus_nnunet.inference.classification import classify_images
    copy = tmp_path / "copy" / folder.name
    shutil.copytree(folder, copy)
    _nnunet.run(["bus-nnunet", "classify", "-i", mixed / "copy.png", "-m", folder, "-m", copy, "--weights", 1, 3,
                 "-f", "0", "-o", tmp_path / "ensemble.csv"], env)
    ensemble_row = next(csv.DictReader(open(tmp_path / "ensemble.csv")))
    assert float(ensemble_row["p_malignant"]) == pytest.approx(float(copy_row["p_malignant"]), abs=2e-6)
    plans["configurations"]["2d"]["classification_classes"] = ["benign", "malignant", "normal"]
    (copy / "plans.json").write_text(json.dumps(plans))
    with pytest.raises(UserError, match=f"classify into different classes: {folder}: \\['benign', 'malignant'\\]; "
                                        f"{copy}: \\['benign', 'malignant', 'normal'\\]"):
        classify_images([mixed / "copy.png"], [folder, copy], folds=["0"])


def test_acsnet_trainer_without_manifest_stops_with_one_line(planned_dataset, tmp_path):
    """Issue 22, item 11: nnUNetv2_train on a dataset without manifest.csv (here: nnUNet_raw without the
    dataset, as after moving the raw data) ends with the message and its fix, not a traceback."""
    ds = planned_dataset
    raw = tmp_path / "raw_without_dataset"
    raw.mkdir()
    env = {**ds.results_env(tmp_path), "nnUNet_raw": str(raw), "BUS_NNUNET_MANIFEST": "",
           "BUS_NNUNET_PRETRAINED": "none"}
    proc = _nnunet.run(["nnUNetv2_train", ds.dataset_id, "2d", 0, "-tr", "ACSNetTrainer", "-device", "cpu"], env,
                       check=False)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr + proc.stdout
    manifest = raw / "Dataset990_SyntheticUS" / "manifest.csv"
    assert f"ACSNetTrainer: manifest {manifest} not found" in proc.stderr
    assert "bus-nnunet convert" in proc.stderr and "BUS_NNUNET_MANIFEST=/path/to/manifest.csv" in proc.stderr
