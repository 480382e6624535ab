"""SCRNet: shapes, spec parameter counts, the spatial gate on a hand-made input, the memory-light
window attention (outputs and gradients, alone and inside the whole network) against ACmix's unfold
formulation and the size of its largest tensor, the w/o-FAM ablation and nnU-Net CLI training."""
import math

import pytest
import torch
import torch.nn.functional as F

from bus_nnunet.network_architectures import create_model, model_info, snap_patch_size
from bus_nnunet.network_architectures import scrnet as scrnet_module
from bus_nnunet.network_architectures.scrnet import (CCAPM, SCRM, SCRNet, ChannelRefinement, SpatialGate,
                                                     local_window_attention)

SMALL_WIDTHS = (16, 32, 64, 128, 256)


def n_params(module):
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)


# -- parameter counts (derived by hand from the layer shapes) ------------------------------
def ccapm_params(c):  # 3 FI (2C^2+56C) + 3 embeddings (C^2+C) + pe 3C/4 + fc 108 + shift 82C + 2 scalars
    return 3 * (2 * c * c + 56 * c) + 3 * (c * c + c) + 3 * c // 4 + 108 + 82 * c + 2


def scrm_params(c, fam=True):  # GN 2C + channel refinement 29C^2/16 + C (+ two CCAPMs)
    return 2 * c + 29 * c * c // 16 + c + (2 * ccapm_params(c) if fam else 0)


def test_parameter_counts_match_spec():
    assert ccapm_params(64) == 53_214 and scrm_params(64) == 114_044 and scrm_params(1024) == 21_297_884
    assert n_params(CCAPM(64)) == 53_214
    assert n_params(ChannelRefinement(64)) == 7_488
    assert n_params(SCRM(64)) == 114_044
    unet_body = 34_527_041  # benchmark UNet, 3 in / 1 out
    scrm_total = sum(scrm_params(c) for c in (64, 128, 256, 512, 1024))
    assert unet_body + scrm_total == 63_213_805  # spec: "SCRNet, SCRM on all 5 levels: ~63.21 M"
    assert n_params(create_model("scrnet", in_channels=3, num_classes=1)) == 63_213_805
    # nnU-Net's default: 1 input channel, 2 classes (first conv 3->1 input: -2*64*9, head 64->2: +65)
    assert n_params(create_model("scrnet")) == 63_213_805 - 2 * 64 * 9 + 65
    without_fam = unet_body + sum(scrm_params(c, fam=False) for c in (64, 128, 256, 512, 1024))
    assert n_params(create_model("scrnet", in_channels=3, num_classes=1, use_fam=False)) == without_fam


# -- shapes and registry ------------------------------------------------------------------------------
def test_registry_and_patch_snapping():
    info = model_info("scrnet")
    assert info.deep_supervision_strides is None
    assert snap_patch_size("scrnet", (64, 100)) == (64, 96)
    assert snap_patch_size("scrnet", (20, 40)) == (64, 64)  # bottleneck needs 4 pixels for the 7x7 window


@pytest.mark.parametrize("in_channels,size", [(1, (64, 64)), (3, (64, 96))])
def test_output_shape_and_eval_determinism(in_channels, size):
    net = SCRNet(in_channels=in_channels, num_classes=2, widths=SMALL_WIDTHS).eval()
    x = torch.randn(2, in_channels, *size)
    with torch.no_grad():
        y1, y2 = net(x), net(x)
    assert y1.shape == (2, 2, *size)
    assert torch.equal(y1, y2)


def test_training_step_and_bf16_autocast():
    net = SCRNet(in_channels=1, num_classes=2, widths=SMALL_WIDTHS).train()
    x = torch.randn(2, 1, 64, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = net(x)
    assert y.shape == (2, 2, 64, 64) and torch.isfinite(y.float()).all()
    y.float().logsumexp(1).mean().backward()
    bad = [n for n, p in net.named_parameters()
           if p.grad is None or not torch.isfinite(p.grad).all() or not p.grad.abs().max() > 0]
    assert bad == []


# -- spatial gate ------------------------------------------------------------------------------------
def _two_level_groups(channels=32, groups=16, spread=2.0):
    """Every GroupNorm group holds its own mean +- spread, half above and half below (checkerboard
    over channel, row, column), so GN(X) is +-1 (gamma 1, beta 0) although every raw value is positive."""
    c_idx = torch.arange(channels).view(channels, 1, 1)
    y_idx = torch.arange(2).view(1, 2, 1)
    x_idx = torch.arange(2).view(1, 1, 2)
    above = ((c_idx + y_idx + x_idx) % 2 == 0)
    group_mean = 10.0 + (c_idx // (channels // groups)).float()
    x = torch.where(above, group_mean + spread, group_mean - spread).unsqueeze(0)
    return x, above.unsqueeze(0)


def test_spatial_gate_on_hand_made_input():
    channels = 32
    x, above = _two_level_groups(channels)
    assert (x > 0).all()
    gate = SpatialGate(channels, groups=16)
    reweight, mask = gate.gate(x)
    assert torch.equal(mask.bool(), above)  # informative exactly where GN(X) >= 0
    # GN(X) = +-1, w = softmax(ones) = 1/C: R = sigmoid(+-1/C)
    r_pos, r_neg = 1 / (1 + math.exp(-1 / channels)), 1 / (1 + math.exp(1 / channels))
    torch.testing.assert_close(reweight, torch.where(above, r_pos, r_neg), atol=1e-6, rtol=0)
    # informative entries: X in branch 1, nothing in branch 2; the others R*X in both
    x1 = torch.where(above, x, r_neg * x)
    x2 = torch.where(above, torch.zeros_like(x), r_neg * x)
    half = channels // 2
    expected = torch.cat([x1[:, :half] + x2[:, half:], x1[:, half:] + x2[:, :half]], dim=1)
    torch.testing.assert_close(gate(x), expected, atol=1e-4, rtol=0)


def test_spatial_gate_mask_is_sign_of_group_norm_for_any_affine():
    gate = SpatialGate(64, groups=16)
    with torch.no_grad():
        gate.gn.weight.copy_(torch.randn(64) * 3)  # negative and peaked scales included
        gate.gn.bias.copy_(torch.randn(64))
    x = torch.randn(2, 64, 8, 8)
    _, mask = gate.gate(x)
    assert torch.equal(mask.bool(), gate.gn(x) >= 0)
    assert 0.1 < mask.mean() < 0.9


# -- memory-light attention == ACmix's unfold attention ------------------------------------------------
def _acmix_unfold_attention(q, k, v, pe, heads, window):
    """ACmix's formulation: unfold k, v and pe over the window; logits q.(k_j + pe_p - pe_j)."""
    b, c, h, w = q.shape
    d, pad = c // heads, window // 2

    def unfold(t):
        t = F.pad(t, (pad,) * 4, mode="reflect")
        return F.unfold(t, window).view(t.shape[0], t.shape[1], window * window, h, w)

    q = q.reshape(b * heads, d, h, w) * d ** -0.5
    k_u, v_u = unfold(k.reshape(b * heads, d, h, w)), unfold(v.reshape(b * heads, d, h, w))
    pe_u = unfold(pe)
    att = (q.unsqueeze(2) * (k_u + pe.unsqueeze(2) - pe_u)).sum(1).softmax(1)
    return (att.unsqueeze(1) * v_u).sum(2).reshape(b, c, h, w)


def _unfold_attention(q, k, v, heads, window=7, recompute_weights=True):
    """The reference for ``local_window_attention`` (relative position folded into k): ACmix's
    unfold formulation with zero pe, differentiated by autograd."""
    return _acmix_unfold_attention(q, k, v, q.new_zeros(1, q.shape[1] // heads, *q.shape[2:]), heads, window)


def test_window_attention_equals_acmix_unfold():
    b, c, h, w, heads = 2, 16, 9, 11, 4
    q, k, v = (torch.randn(b, c, h, w, dtype=torch.float64) for _ in range(3))
    pe = torch.randn(1, c // heads, h, w, dtype=torch.float64)
    reference = _acmix_unfold_attention(q, k, v, pe, heads, 7)
    k_rel = (k.view(b, heads, c // heads, h, w) - pe.unsqueeze(1)).view(b, c, h, w)
    torch.testing.assert_close(local_window_attention(q, k_rel, v, heads, 7), reference)


@pytest.mark.parametrize("channel_loop", [True, False], ids=["channel-loop", "one-temporary"])
@pytest.mark.parametrize("recompute_weights", [True, False], ids=["recompute", "keep-weights"])
@pytest.mark.parametrize("b,c,h,w,heads", [(2, 16, 9, 11, 4), (3, 32, 13, 7, 4), (1, 8, 8, 8, 2)])
def test_window_attention_gradients_equal_unfold_reference(monkeypatch, channel_loop, recompute_weights,
                                                           b, c, h, w, heads):
    # both ways of reducing over the head dimension (CPU planes above/below the threshold; CUDA)
    monkeypatch.setattr(scrnet_module, "_CHANNEL_LOOP_MIN_PLANE", 0 if channel_loop else 10 ** 12)
    generator = torch.Generator().manual_seed(b * 100 + h * 10 + w)
    q, k, v, grad_out = (torch.randn(b, c, h, w, dtype=torch.float64, generator=generator) for _ in range(4))
    results = []
    for attention in (local_window_attention, _unfold_attention):
        inputs = [t.clone().requires_grad_() for t in (q, k, v)]
        out = attention(*inputs, heads, 7, recompute_weights=recompute_weights)
        out.backward(grad_out)
        results.append([out.detach()] + [t.grad for t in inputs])
    for ours, reference in zip(*results):
        torch.testing.assert_close(ours, reference)
    with torch.no_grad():  # inference path (no autograd function)
        torch.testing.assert_close(local_window_attention(q, k, v, heads), results[1][0])


def test_window_attention_float32_and_bfloat16_close_to_float64():
    q, k, v = (torch.randn(2, 16, 12, 10, dtype=torch.float64) for _ in range(3))
    reference = _unfold_attention(q, k, v, 4)
    out32 = local_window_attention(q.float(), k.float(), v.float(), 4)
    torch.testing.assert_close(out32.double(), reference, atol=1e-5, rtol=1e-5)
    out16 = local_window_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), 4)
    assert out16.dtype == torch.bfloat16
    torch.testing.assert_close(out16.double(), reference, atol=2e-2, rtol=2e-2)  # input rounding only


def test_window_attention_never_materialises_the_unfolded_window():
    """No tensor of B x C x 49 x H x W (ACmix's unfolded k/v) in the forward or backward
    pass; the largest allowed are the B x heads x 49 x H x W weights and the padded k/v."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class LargestTensor(TorchDispatchMode):
        largest = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(t, torch.Tensor):
                    self.largest = max(self.largest, t.numel())
            return out

    b, c, h, w, heads = 2, 64, 16, 16, 4
    q, k, v = (torch.randn(b, c, h, w, requires_grad=True) for _ in range(3))
    with LargestTensor() as mode:
        local_window_attention(q, k, v, heads).square().sum().backward()
    allowed = max(b * heads * 49 * h * w, b * c * (h + 6) * (w + 6))
    assert 0 < mode.largest <= allowed < b * c * 49 * h * w // 8
    assert all(t.grad is not None and torch.isfinite(t.grad).all() and t.grad.abs().max() > 0 for t in (q, k, v))


def test_scrnet_with_reference_attention_gives_same_outputs_and_gradients(monkeypatch):
    """Whole network (train mode: batch statistics, non-square input, batch 2) in float64: the
    memory-light attention and the unfold reference give the same logits and parameter gradients."""
    x = torch.randn(2, 1, 64, 80, dtype=torch.float64)
    results = []
    for attention in (local_window_attention, _unfold_attention):
        monkeypatch.setattr(scrnet_module, "local_window_attention", attention)
        torch.manual_seed(0)
        net = SCRNet(in_channels=1, num_classes=2, widths=SMALL_WIDTHS).double().train()
        out = net(x)
        out.square().mean().backward()
        results.append([out.detach()] + [p.grad for p in net.parameters()])
    for ours, reference in zip(*results):
        torch.testing.assert_close(ours, reference)


def test_checkpointed_attention_gives_same_gradients():
    torch.manual_seed(1)
    module = CCAPM(16).train()
    f1, f2 = torch.randn(2, 16, 8, 8), torch.randn(2, 16, 8, 8)
    grads = []
    for use_checkpoint in (True, False):
        module.checkpoint_attention = use_checkpoint
        module.zero_grad()
        module(f1, f2).square().mean().backward()
        grads.append([p.grad.clone() for p in module.parameters()])
    for g_ckpt, g_plain in zip(*grads):
        torch.testing.assert_close(g_ckpt, g_plain)


def test_shift_conv_starts_as_pure_shifts():
    module = CCAPM(16)
    maps = torch.randn(1, 9 * module.head_dim, 6, 6)
    out = module.shift(maps)
    # output channel o of group g sums the 9 maps of group g, map i shifted by (i//3 - 1, i%3 - 1)
    padded = F.pad(maps, (1, 1, 1, 1))
    group = 2
    expected = sum(padded[0, group * 9 + i, i // 3:i // 3 + 6, i % 3:i % 3 + 6] for i in range(9))
    per_group = module.shift.out_channels // module.head_dim
    for o in range(group * per_group, (group + 1) * per_group):
        torch.testing.assert_close(out[0, o], expected)


# -- ablation -----------------------------------------------------------------------------------------
def test_without_fam_sums_the_refined_features():
    scrm = SCRM(32, use_fam=False).eval()
    assert scrm.fam is None
    x = torch.randn(1, 32, 8, 8)
    x_high, x_low = scrm.channel_refinement(scrm.spatial_gate(x))
    torch.testing.assert_close(scrm(x), x_high + x_low)


# -- nnU-Net CLI --------------------------------------------------------------------------------------
def test_scrnet_trainer_trains_and_predicts_through_nnunet_cli(planned_dataset, tmp_path):
    import _nnunet

    ds = planned_dataset
    env = ds.results_env(tmp_path)
    # one training and one validation iteration: a 63 M-parameter network is slow on CPU
    schedule = {**_nnunet.SMOKE_SCHEDULE, "BUS_NNUNET_NUM_ITERATIONS": "1"}
    proc = _nnunet.train_cli(ds, env, "SCRNetTrainer", schedule=schedule)
    assert "network 'scrnet'" in proc.stdout
    folder = _nnunet.model_folder(env, "SCRNetTrainer")
    saved = torch.load(folder / "fold_0" / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert saved["trainer_name"] == "SCRNetTrainer"
    assert sum(v.numel() for k, v in saved["network_weights"].items()
               if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))) == 63_212_718
    out = tmp_path / "pred"
    _nnunet.predict_and_check_masks(ds, env, "SCRNetTrainer", out, extra=("--disable_tta",))
