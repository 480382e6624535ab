"""AnatoSegNet: shapes, parameter count, the anatomical attention (released vs intended token
layout), pretrained ResNet-50 loading, and the trainer through nnU-Net's own CLI."""
import math

import numpy as np
import pytest
import torch

import _nnunet
from bus_nnunet.network_architectures import create_model, model_info, snap_patch_size
from bus_nnunet.network_architectures.anatosegnet import AnatomicalAttention


def load_encoder_report(network, path) -> str:
    """The registry entry's loader (the one the trainer uses), as its one-line report."""
    return str(model_info("anatosegnet").pretrained[0].load(network, path))


@pytest.fixture(scope="module")
def gray_net():
    torch.manual_seed(0)
    return create_model("anatosegnet", in_channels=1, num_classes=2)


def n_params(module):
    return sum(p.numel() for p in module.parameters())


# -- network ------------------------------------------------------------------------------------------
def test_parameter_count_matches_the_reference():
    # 92,857,282 parameters in use for RGB input (reference prints 94.9 M with the unused fc)
    net = create_model("anatosegnet", in_channels=3, num_classes=2)
    assert n_params(net) == 92_857_282
    assert n_params(net.attention3) == 4 * 1024 ** 2 + 1024 == 4_195_328
    assert n_params(net.attention4) == 4 * 2048 ** 2 + 2048 == 16_779_264
    assert n_params(net.up4) == 36_707_328
    # grayscale: only conv1 shrinks (64 x 2 x 7 x 7 fewer weights)
    assert n_params(create_model("anatosegnet", in_channels=1)) == 92_857_282 - 64 * 2 * 49
    assert not any("fc" in name for name in net.state_dict())


def test_shapes_any_channels_non_square_and_deterministic_eval(gray_net):
    info = model_info("anatosegnet")
    assert info.deep_supervision_strides is None and info.size_divisor == 32
    assert snap_patch_size("anatosegnet", (70, 100)) == (64, 96)
    x = torch.randn(2, 1, 64, 96)
    y = gray_net(x)
    assert y.shape == (2, 2, 64, 96)
    net4 = create_model("anatosegnet", in_channels=4, num_classes=3).eval()
    with torch.no_grad():
        x4 = torch.randn(1, 4, 96, 64)
        a, b = net4(x4), net4(x4)
    assert a.shape == (1, 3, 96, 64) and torch.equal(a, b)


def test_autocast_forward_is_finite(gray_net):
    gray_net.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        y = gray_net(torch.randn(1, 1, 64, 64) * 5)
    assert torch.isfinite(y.float()).all()


# -- anatomical attention -----------------------------------------------------------------------------
def naive_attention(module, x):
    """Explicit (Q K^T + Q_h K_h^T + Q_v K_v^T)/sqrt(d) + beta - gamma|i - j| attention, per head."""
    b, c, h, w = x.shape
    tokens = x.flatten(2).transpose(1, 2)
    d_h, d_v = module.differences(tokens, h, w)
    q, k, v = module.qkv(tokens).chunk(3, -1)
    qh, kh, _ = module.qkv(d_h).chunk(3, -1)
    qv, kv, _ = module.qkv(d_v).chunk(3, -1)
    n, heads, d = h * w, module.num_heads, c // module.num_heads
    idx = torch.arange(n, dtype=torch.float32)
    prior = module.beta - module.gamma * (idx[:, None] - idx[None, :]).abs()
    out = torch.zeros(b, n, c)
    for head in range(heads):
        s = slice(head * d, (head + 1) * d)
        logits = (q[..., s] @ k[..., s].transpose(1, 2) + qh[..., s] @ kh[..., s].transpose(1, 2)
                  + qv[..., s] @ kv[..., s].transpose(1, 2)) / math.sqrt(d) + prior
        out[..., s] = logits.softmax(-1) @ v[..., s]
    return module.proj(out).transpose(1, 2).reshape(b, c, h, w)


@pytest.mark.parametrize("layout", ["released", "intended"])
def test_attention_matches_explicit_formula(layout):
    torch.manual_seed(1)
    module = AnatomicalAttention(16, num_heads=2, beta=3.5, token_layout=layout)
    x = torch.randn(2, 16, 3, 5)  # non-square grid: token positions follow the actual H, W
    with torch.no_grad():
        torch.testing.assert_close(module(x), naive_attention(module, x), rtol=1e-4, atol=1e-5)


def test_position_prior_values():
    raster = AnatomicalAttention(8, num_heads=1, gamma=1.0, beta=0.0)
    g = raster.position_logits(2, 3)
    assert g[0].tolist() == [0, -1, -2, -3, -4, -5]
    assert g[2, 3] == -1  # raster artefact: end of row 0 and start of row 1 are "neighbours"
    assert g[0, 3] == -3  # the pixel below is W tokens away
    row = AnatomicalAttention(8, num_heads=1, gamma=2.0, beta=0.0, position_bias="row")
    assert row.position_logits(2, 3)[0].tolist() == [0, 0, 0, -2, -2, -2]


def test_beta_has_no_effect():
    torch.manual_seed(2)
    a = AnatomicalAttention(16, num_heads=2, beta=0.0)
    b = AnatomicalAttention(16, num_heads=2, beta=3.5)
    b.load_state_dict(a.state_dict())
    x = torch.randn(1, 16, 4, 4)
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x))


def test_intended_differences_are_spatial():
    module = AnatomicalAttention(4, num_heads=1, token_layout="intended")
    h, w = 3, 4
    c_idx = torch.arange(4.0)[:, None, None]
    y_idx = torch.arange(float(h))[None, :, None]
    x_idx = torch.arange(float(w))[None, None, :]
    fmap = ((c_idx + 1) * x_idx + 10 * y_idx * c_idx)[None]  # d/dx = c + 1, d/dy = 10 c
    tokens = fmap.flatten(2).transpose(1, 2)
    d_h, d_v = module.differences(tokens, h, w)
    d_h = d_h.transpose(1, 2).reshape(1, 4, h, w)
    d_v = d_v.transpose(1, 2).reshape(1, 4, h, w)
    assert torch.equal(d_h[..., :-1], (c_idx + 1).expand(4, h, w - 1)[None])
    assert torch.equal(d_h[..., -1], torch.zeros(1, 4, h))
    assert torch.equal(d_v[:, :, :-1], (10 * c_idx).expand(4, h - 1, w)[None])
    assert torch.equal(d_v[:, :, -1], torch.zeros(1, 4, w))


def test_released_differences_follow_the_spec_closed_form():
    # with N | C and W | C, the released "horizontal" term at (token p', channel c') is
    # x[n, c+1] - x[n, c] (0 when c mod W = W-1), "vertical" x[n, c+W] - x[n, c] (0 when c mod N >= N-W),
    # where n = (c'N + p') // C and c = (c'N + p') mod C.
    h = w = 4
    n_tok, chans = h * w, 32
    torch.manual_seed(3)
    x = torch.randn(1, n_tok, chans, dtype=torch.float64)
    module = AnatomicalAttention(chans, num_heads=1, token_layout="released")
    d_h, d_v = module.differences(x, h, w)
    xs = x[0].numpy()
    exp_h, exp_v = np.zeros((n_tok, chans)), np.zeros((n_tok, chans))
    for p in range(n_tok):
        for cc in range(chans):
            n, c = divmod(cc * n_tok + p, chans)
            exp_h[p, cc] = 0.0 if c % w == w - 1 else xs[n, c + 1] - xs[n, c]
            exp_v[p, cc] = 0.0 if c % n_tok >= n_tok - w else xs[n, c + w] - xs[n, c]
    np.testing.assert_allclose(d_h[0].numpy(), exp_h, atol=1e-12)
    np.testing.assert_allclose(d_v[0].numpy(), exp_v, atol=1e-12)


def test_layouts_agree_only_where_reshape_equals_transpose():
    torch.manual_seed(4)
    # one channel: a reshape of (N, 1) tokens is the correct map, so both layouts are the same
    released = AnatomicalAttention(1, num_heads=1, token_layout="released")
    intended = AnatomicalAttention(1, num_heads=1, token_layout="intended")
    intended.load_state_dict(released.state_dict())
    x1 = torch.randn(2, 1, 4, 6)
    with torch.no_grad():
        torch.testing.assert_close(released(x1), intended(x1), rtol=0, atol=0)
    # several channels and tokens: the difference terms and hence the output differ
    released = AnatomicalAttention(16, num_heads=2, token_layout="released")
    intended = AnatomicalAttention(16, num_heads=2, token_layout="intended")
    intended.load_state_dict(released.state_dict())
    x = torch.randn(2, 16, 4, 4)
    tokens = x.flatten(2).transpose(1, 2)
    for a, b in zip(released.differences(tokens, 4, 4), intended.differences(tokens, 4, 4)):
        assert not torch.allclose(a, b)
    with torch.no_grad():
        assert (released(x) - intended(x)).abs().max() > 1e-3
        # a constant map has no differences in either layout: identical outputs
        const = torch.full((1, 16, 4, 4), 0.7)
        torch.testing.assert_close(released(const), intended(const), rtol=0, atol=0)


def test_network_layouts_share_weights_but_not_outputs(gray_net):
    intended = create_model("anatosegnet", in_channels=1, token_layout="intended")
    intended.load_state_dict(gray_net.state_dict())  # same parameters, interchangeable
    assert intended.attention3.token_layout == "intended" and gray_net.attention4.token_layout == "released"
    gray_net.eval(), intended.eval()
    x = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        assert not torch.allclose(gray_net(x), intended(x))
    with pytest.raises(ValueError, match="token_layout"):
        create_model("anatosegnet", token_layout="transposed")


# -- pretrained encoder -------------------------------------------------------------------------------
def test_load_torchvision_and_timm_resnet50(tmp_path, gray_net):
    import torchvision

    torch.manual_seed(5)
    ref = torchvision.models.resnet50(weights=None)
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.01)  # differ from any fresh init
    path = tmp_path / "tv_resnet50.pth"
    torch.save(ref.state_dict(), path)
    report = load_encoder_report(gray_net, str(path))
    n_encoder = sum(1 for k in gray_net.encoder.state_dict() if not k.endswith("num_batches_tracked"))
    assert f"loaded {n_encoder}/{n_encoder}" in report and "folded from 3 to 1" in report
    torch.testing.assert_close(gray_net.encoder.conv1.weight, ref.conv1.weight.sum(1, keepdim=True))
    torch.testing.assert_close(gray_net.encoder.layer4[2].conv3.weight, ref.layer4[2].conv3.weight)
    torch.testing.assert_close(gray_net.encoder.layer2[0].bn1.running_var, ref.layer2[0].bn1.running_var)

    timm = pytest.importorskip("timm")
    timm_ref = timm.create_model("resnet50", pretrained=False)
    path = tmp_path / "timm_resnet50.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in timm_ref.state_dict().items()}}, path)
    net3 = create_model("anatosegnet", in_channels=3)
    assert "loaded" in load_encoder_report(net3, str(path))
    torch.testing.assert_close(net3.encoder.conv1.weight, timm_ref.conv1.weight)
    torch.testing.assert_close(net3.encoder.layer3[5].conv2.weight, timm_ref.layer3[5].conv2.weight)

    bad = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), bad)
    with pytest.raises(ValueError, match="not a ResNet-50"):
        load_encoder_report(gray_net, str(bad))


# -- nnU-Net CLI --------------------------------------------------------------------------------------
def test_trainer_recipe():
    from bus_nnunet.recipes import lr_at_epoch
    from bus_nnunet.trainers.anatosegnet import AnatoSegNetTrainer

    r = AnatoSegNetTrainer.recipe
    assert (r.optimizer, r.lr, r.weight_decay, r.dice_weight, r.ce_weight) == ("adam", 1e-4, 1e-4, 0.0, 1.0)
    assert [lr_at_epoch(r, e, 50) for e in (0, 19, 20, 39, 40, 49)] == pytest.approx(
        [1e-4, 1e-4, 1e-5, 1e-5, 1e-6, 1e-6])


def test_trainer_trains_with_pretrained_encoder_and_predicts(planned_dataset, tmp_path):
    import torchvision

    ds = planned_dataset
    weights = tmp_path / "resnet50.pth"
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), weights)
    env = {**ds.results_env(tmp_path), "BUS_NNUNET_RESNET50": str(weights)}
    proc = _nnunet.train_cli(ds, env, "AnatoSegNetTrainer")
    assert "pretrained weights from" in proc.stdout and "folded from 3 to 1" in proc.stdout
    folder = _nnunet.model_folder(env, "AnatoSegNetTrainer")
    saved = torch.load(folder / "fold_0" / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert saved["trainer_name"] == "AnatoSegNetTrainer"
    assert sum(v.numel() for k, v in saved["network_weights"].items()
               if "running" not in k and "num_batches" not in k) == 92_857_282 - 64 * 2 * 49

    out = tmp_path / "pred"
    _nnunet.predict_and_check_masks(ds, env, "AnatoSegNetTrainer", out)
