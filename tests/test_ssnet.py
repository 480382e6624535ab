"""SS-Net: spec parameter counts, supported sizes, deterministic eval, the exact selective scan,
the released tile-scan permutation, the partial PVTv2-b2 transfer and nnU-Net CLI training."""
import json
import types

import pytest
import torch

import _nnunet
from bus_nnunet.network_architectures import create_model, model_info, snap_patch_size
from bus_nnunet.network_architectures.selective_scan import linear_scan, selective_scan, selective_scan_reference
from bus_nnunet.network_architectures.ssnet import DynamicTilesScan, hilbert_distance_table

#: the one pretrained path: the registry entry's loader (what the trainer calls)
load_backbone = model_info("ssnet").pretrained[0].load


#: SS-Net at 1x3x256x256 (``in_channels=3, num_classes=1``): ``trainable_params`` is ``sum(p.numel())``;
#: ``thop_params`` / ``thop_macs`` are what ``thop.profile`` reports for the released code and what the
#: paper quotes (16.21 M, 4.93 G); ``thop_macs_this_module`` is thop on our SSNet (measured).  thop omits
#: 1,324,583 raw parameters (SSM, GroupNorm, learnable DCT/temperature scalars).
COMPLEXITY_256 = {"trainable_params": 17_535_538, "thop_params": 16_210_955, "thop_macs": 4_932_388_960,
                  "thop_macs_this_module": 4_931_318_848, "backbone_params": 3_545_984, "backbone_tensors": 152}


def n_params(model):
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@pytest.fixture(scope="module")
def net128():
    torch.manual_seed(0)
    return create_model("ssnet", in_channels=1, num_classes=2, input_size=(128, 128))


# -- architecture ---------------------------------------------------------------------------------
def test_parameter_count_matches_spec():
    model = create_model("ssnet", in_channels=3, num_classes=1, input_size=256)
    assert n_params(model) == 17_535_538 == COMPLEXITY_256["trainable_params"]
    assert n_params(model.backbone) == 3_545_984 and len(model.backbone.state_dict()) == 152
    # spec section 5 per-component counts
    assert n_params(model.encoder2) == 9 * 523_786 and n_params(model.decoder0) == 3 * 45_702
    assert [n_params(getattr(model, f"feature_fusion_{i}")) for i in range(3)] == [25_224, 69_576, 234_696]
    assert [n_params(getattr(model, f"hfa{i}")) for i in range(3)] == [781, 1_553, 3_089]
    # grayscale stem (1 x 7 x 7 x 64 instead of 3 x ...) and a 2-class head (+17); independent of size/variant
    gray = create_model("ssnet", in_channels=1, num_classes=2, input_size=128, faithful_tiles=False)
    assert n_params(gray) == 17_535_538 - 2 * 49 * 64 + 17
    assert set(gray.state_dict()) == set(model.state_dict())


def test_forward_shapes_and_eval_determinism(net128):
    net128.eval()
    x = torch.rand(1, 1, 128, 128)
    with torch.no_grad():
        a, b = net128(x), net128(x)
    assert a.shape == (1, 2, 128, 128) and torch.isfinite(a).all()
    assert torch.equal(a, b)  # no Gumbel noise, no drop-path, no dropout in eval
    net128.train()
    torch.manual_seed(1)
    with torch.no_grad():
        c = net128(x)
    assert not torch.allclose(a, c)  # training mode is stochastic (Gumbel, DropPath, Dropout, batch BN)


def test_backward_gives_every_parameter_a_nonzero_gradient(net128):
    net128.train()
    net128.zero_grad(set_to_none=True)
    torch.manual_seed(0)
    params = dict(net128.named_parameters())
    # DropPath may skip a whole block for every sample of a batch: accumulate up to three batches
    for _ in range(3):
        net128(torch.rand(2, 1, 128, 128)).square().mean().backward()
        zero = [n for n, p in params.items() if p.grad is None or not p.grad.abs().max() > 0]
        if not zero:
            break
    not_finite = [n for n, p in params.items() if p.grad is not None and not torch.isfinite(p.grad).all()]
    net128.zero_grad(set_to_none=True)
    # the tile scores reach the loss only through the channel weights (tiny gradients, but not zero)
    assert zero == [] and not_finite == []


def test_supported_sizes_and_registry():
    info = model_info("ssnet")
    assert info.takes_input_size and info.deep_supervision_strides is None
    assert snap_patch_size("ssnet", (64, 64)) == (128, 128)
    assert snap_patch_size("ssnet", (250, 400)) == (256, 384)
    for bad in (64, 192, 320):
        with pytest.raises(ValueError):
            create_model("ssnet", input_size=bad)
    for size in (384, 512, (256, 384)):  # construct only (forward at these sizes is slow on CPU)
        model = create_model("ssnet", input_size=size)
        h = size if isinstance(size, int) else size[0]
        assert model.hfa0.patch == 8 and model.hfa0.global_dct.shape[-2] == h // 4
    with pytest.warns(UserWarning, match="degraded"):
        degraded = create_model("ssnet", input_size=224)
    assert degraded.hfa2.patch == 7  # released behaviour: P = 7 at 14x14
    rect = create_model("ssnet", input_size=(128, 256)).eval()
    with torch.no_grad():
        assert rect(torch.rand(1, 1, 128, 256)).shape == (1, 2, 128, 256)
        with pytest.raises(ValueError, match="input_size"):
            rect(torch.rand(1, 1, 128, 128))


def test_hilbert_tables_match_spec_appendix():
    assert hilbert_distance_table(2).tolist() == [0, 3, 1, 2]
    assert hilbert_distance_table(4).tolist() == [0, 1, 14, 15, 3, 2, 13, 12, 4, 7, 8, 11, 5, 6, 9, 10]
    assert torch.argsort(hilbert_distance_table(8))[:16].tolist() == [0, 8, 9, 1, 2, 3, 11, 10, 18, 19, 27, 26,
                                                                        25, 17, 16, 24]


def test_released_tile_scan_permutation_and_corrected_variant():
    """Spec appendix B: identity scan on a 16x16 plane holding 0..255, p = 2, any tile order."""
    plane = torch.arange(256, dtype=torch.float32).view(1, 1, 16, 16)
    order = torch.randperm(64).view(1, 1, 64)
    released = DynamicTilesScan(8, 2, faithful_tiles=True).tile_scan(plane, order, lambda s: s)
    assert released[0, 0, 0].tolist() == [0, 2, 8, 10, 32, 34, 40, 42, 64, 66, 72, 74, 96, 98, 104, 106]
    assert released[0, 0, 1].tolist() == [4, 6, 12, 14, 36, 38, 44, 46, 68, 70, 76, 78, 100, 102, 108, 110]
    corrected = DynamicTilesScan(8, 2, faithful_tiles=False)
    assert torch.equal(corrected.tile_scan(plane, order, lambda s: s), plane)  # real tiles: identity round trip
    # corrected variant: the sequence visits real tiles in `order`, each in Hilbert order
    seen = []
    corrected.tile_scan(plane, order, lambda s: seen.append(s.clone()) or s)
    first_tile = int(order[0, 0, 0])
    ti, tj = divmod(first_tile, 8)
    expected = [plane[0, 0, 2 * ti + y, 2 * tj + x].item() for y, x in ((0, 0), (1, 0), (1, 1), (0, 1))]
    assert seen[0][0, 0, :4].tolist() == expected


# -- selective scan ----------------------------------------------------------------------------------
def _scan_inputs(batch, groups, channels, length, d_state=8, seed=0, delta_shift=-1.0):
    g = torch.Generator().manual_seed(seed)
    kd = groups * channels
    return [torch.randn(batch, kd, length, generator=g),                      # u
            torch.randn(batch, kd, length, generator=g) * 0.5 + delta_shift,  # delta (pre-softplus)
            -torch.exp(torch.randn(kd, d_state, generator=g) * 0.5 + 0.5),    # A < 0
            torch.randn(batch, groups, d_state, length, generator=g),         # B
            torch.randn(batch, groups, d_state, length, generator=g),         # C
            torch.randn(kd, generator=g),                                     # D
            torch.randn(kd, generator=g) * 0.5]                               # delta_bias


# delta_shift sets how fast states decay, hence the scan's chunk length and how close a chunk's
# decay comes to the exp(-40) limit: -3/-2 -> 32 steps (decay up to e^-25), -1 -> 8 steps (e^-31),
# 1 -> 4 steps (e^-34), 1.5 -> 2 steps (e^-33), 12 -> single steps that decay below float32's range
@pytest.mark.parametrize("batch,groups,channels,length,delta_shift", [
    (2, 2, 6, 37, -1.0), (1, 1, 16, 300, -1.0), (2, 2, 4, 4, -1.0), (2, 1, 4, 1000, -3.0),
    (1, 1, 8, 100, -2.0), (1, 1, 8, 100, 1.0), (2, 2, 4, 61, 1.5), (2, 2, 4, 50, 12.0), (1, 1, 4, 1, 0.0)])
@pytest.mark.parametrize("backend", ["steps", "chunked"])
def test_selective_scan_matches_step_loop(batch, groups, channels, length, delta_shift, backend):
    inputs = [t.requires_grad_() for t in _scan_inputs(batch, groups, channels, length, delta_shift=delta_shift)]
    ours = selective_scan(*inputs, backend=backend)
    ref = selective_scan_reference(*inputs)
    grad_out = torch.randn_like(ref)
    g_ours = torch.autograd.grad(ours, inputs, grad_out)
    g_ref = torch.autograd.grad(ref, inputs, grad_out)
    assert ours.dtype == torch.float32

    def close(a, b):  # 1e-5 relative to the tensor's scale
        return (a - b).abs().max().item() <= 1e-5 * max(1.0, b.abs().max().item())

    assert close(ours, ref)
    names = ["u", "delta", "A", "B", "C", "D", "delta_bias"]
    for name, a, b in zip(names, g_ours, g_ref):
        assert close(a, b), name


@pytest.mark.parametrize("backend", ["steps", "chunked"])
def test_selective_scan_without_softplus_bias_or_grad(backend):
    u, delta, A, B, C, D, _ = _scan_inputs(1, 1, 4, 40)
    delta = delta.exp()  # positive without the softplus
    ref = selective_scan_reference(u, delta, A, B[:, 0], C[:, 0], D, delta_softplus=False)
    with torch.no_grad():  # the inference path (no autograd graph, workspace buffers handed back)
        ours = selective_scan(u, delta, A, B[:, 0], C[:, 0], D, delta_softplus=False, backend=backend)
    assert (ours - ref).abs().max() <= 1e-5 * ref.abs().max()


def test_step_scan_second_backward_after_buffer_reuse_fails_loudly():
    """The step scan hands its saved buffers back to the workspace after backward: a second backward
    through a retained graph is exact until another scan reuses them, then autograd refuses."""
    inputs = [t.requires_grad_() for t in _scan_inputs(1, 1, 4, 30)]
    y = selective_scan(*inputs, backend="steps")
    first = torch.autograd.grad(y.sum(), inputs[0], retain_graph=True)[0]
    assert torch.equal(torch.autograd.grad(y.sum(), inputs[0], retain_graph=True)[0], first)
    with torch.no_grad():
        selective_scan(*_scan_inputs(1, 1, 4, 30, seed=1), backend="steps")  # takes the same buffers
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        torch.autograd.grad(y.sum(), inputs[0])


def test_linear_scan_against_hand_values():
    log_a = torch.log(torch.tensor([1.0, 0.5, 0.25])).view(1, 3)
    x = torch.tensor([1.0, 2.0, 0.0]).view(1, 3)
    for chunk in (None, 1, 2, 3, 4):
        # forward: h1 = 1, h2 = 0.5*1 + 2 = 2.5, h3 = 0.25*2.5 + 0 = 0.625
        assert torch.allclose(linear_scan(log_a, x, chunk=chunk), torch.tensor([[1.0, 2.5, 0.625]]))
        # transposed: g3 = 0, g2 = 2 + 0.25*0 = 2, g1 = 1 + 0.5*2 = 2
        assert torch.allclose(linear_scan(log_a, x, chunk=chunk, reverse=True), torch.tensor([[2.0, 2.0, 0.0]]))
    assert torch.equal(x, torch.tensor([[1.0, 2.0, 0.0]]))  # the caller's tensors are left alone
    # a step that decays below float32's range resets the state exactly: h = [3, 1e-30*3 + 5 -> 5]
    assert torch.allclose(linear_scan(torch.tensor([[0.0, -200.0]]), torch.tensor([[3.0, 5.0]])),
                          torch.tensor([[3.0, 5.0]]))


# -- partial transfer --------------------------------------------------------------------------------
def _timm_to_official(sd):
    from bus_nnunet.network_architectures.ssnet import _timm_to_official as convert
    out = {}
    for k, v in sd.items():
        name = convert(k)
        out[name if name is not None else k] = v
    return out


@pytest.fixture(scope="module")
def pvt_checkpoints(tmp_path_factory):
    timm = pytest.importorskip("timm")
    torch.manual_seed(3)
    pvt = timm.create_model("pvt_v2_b2", pretrained=False).eval()
    folder = tmp_path_factory.mktemp("pvt")
    timm_sd = pvt.state_dict()
    torch.save(timm_sd, folder / "timm_pvt_v2_b2.pth")
    torch.save(_timm_to_official(timm_sd), folder / "pvt_v2_b2.pth")  # official whai362 key layout
    return types.SimpleNamespace(model=pvt, timm=folder / "timm_pvt_v2_b2.pth", official=folder / "pvt_v2_b2.pth",
                                 folder=folder)


@pytest.mark.parametrize("layout", ["official", "timm"])
def test_partial_transfer_loads_stages_1_2(pvt_checkpoints, layout):
    pvt = pvt_checkpoints.model
    rgb = create_model("ssnet", in_channels=3, num_classes=1, input_size=128)
    report = load_backbone(rgb, str(getattr(pvt_checkpoints, layout)))
    assert (report.tensors, report.parameters) == (152, 3_545_984)
    # the transferred encoder computes timm's stage-1/2 features
    x = torch.rand(1, 3, 64, 64)
    rgb.eval()
    with torch.no_grad():
        e0, e1 = rgb.backbone(x)
        t0 = pvt.stages[0](pvt.patch_embed(x))
        t1 = pvt.stages[1](t0)
    assert torch.allclose(e0, t0, atol=1e-5) and torch.allclose(e1, t1, atol=1e-5)

    gray = create_model("ssnet", in_channels=1, num_classes=2, input_size=128)
    report = load_backbone(gray, str(getattr(pvt_checkpoints, layout)))
    assert report.tensors == 152 and report.parameters == 3_545_984 - 2 * 49 * 64
    stem = pvt.patch_embed.proj.weight
    assert torch.allclose(gray.backbone.patch_embed1.proj.weight, stem.sum(1, keepdim=True))
    with torch.no_grad():  # grayscale image == the RGB image with three equal channels
        g0, _ = gray.eval().backbone(x[:, :1])
        r0, _ = rgb.backbone(x[:, :1].expand(-1, 3, -1, -1))
    assert torch.allclose(g0, r0, atol=1e-5)


def test_partial_transfer_rejects_wrong_checkpoints(pvt_checkpoints, tmp_path):
    timm = pytest.importorskip("timm")
    model = create_model("ssnet", input_size=128)
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    sd = torch.load(pvt_checkpoints.official)
    del sd["block2.3.mlp.fc2.weight"]
    with pytest.raises(ValueError, match="lacks 1 of the 152"):
        load_backbone(model, sd)
    sd = torch.load(pvt_checkpoints.official)
    sd["block1.0.attn.kv.weight"] = torch.zeros(64, 64)
    with pytest.raises(ValueError, match=r"block1.0.attn.kv.weight: checkpoint shape \(64, 64\)"):
        load_backbone(model, sd)
    b0 = timm.create_model("pvt_v2_b0", pretrained=False).state_dict()  # 32/64-dim stages, depths 2/2
    with pytest.raises(ValueError, match="lacks"):
        load_backbone(model, b0)
    with pytest.raises(ValueError, match="lacks"):
        load_backbone(model, {"conv.weight": torch.zeros(1)})
    assert all(torch.equal(before[k], v) for k, v in model.backbone.state_dict().items())  # nothing half-loaded

    from bus_nnunet.trainers.ssnet import SSNetTrainer
    fake = types.SimpleNamespace(pretrained_env=SSNetTrainer.pretrained_env, network_name=SSNetTrainer.network_name)
    report = SSNetTrainer.load_pretrained_weights(fake, model, str(pvt_checkpoints.timm))
    assert "152" in report and "3,539,712" in report
    torch.save(b0, tmp_path / "b0.pth")
    with pytest.raises(ValueError, match="BUS_NNUNET_PVT_V2_B2"):
        SSNetTrainer.load_pretrained_weights(fake, model, str(tmp_path / "b0.pth"))


# -- nnU-Net -------------------------------------------------------------------------------------------
def test_ssnet_trainer_recipe():
    from bus_nnunet.trainers.ssnet import SSNetTrainer
    r = SSNetTrainer.recipe
    assert (r.optimizer, r.lr, r.weight_decay, r.schedule, r.min_lr) == ("adamw", 1e-4, 1e-2, "cosine", 1e-5)
    assert (r.ce_weight, r.dice_weight) == (1.0, 1.0)
    assert SSNetTrainer.pretrained_env == "BUS_NNUNET_PVT_V2_B2"


def test_ssnet_trainer_trains_and_predicts_via_nnunet_cli(planned_dataset, pvt_checkpoints, tmp_path):
    ds = planned_dataset
    env = {**ds.results_env(tmp_path), "BUS_NNUNET_PVT_V2_B2": str(pvt_checkpoints.timm)}
    proc = _nnunet.train_cli(ds, env, "SSNetTrainer")
    assert "loaded 152/152 PVTv2-b2 stage-1/2 tensors" in proc.stdout
    assert "patch size [64, 64] -> [128, 128]" in proc.stdout
    folder = _nnunet.model_folder(env, "SSNetTrainer")
    assert (folder / "fold_0" / "checkpoint_final.pth").is_file()
    plans = json.loads((folder / "plans.json").read_text())
    assert plans["configurations"]["2d"]["patch_size"] == [128, 128]

    out = tmp_path / "pred"
    _nnunet.predict_and_check_masks(ds, env, "SSNetTrainer", out)
