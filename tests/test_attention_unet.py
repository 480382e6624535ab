"""Multi-encoder attention U-Net (Anari et al. 2025): parameter counts of the paper's Table 1,
attention blocks checked by hand, frozen encoders, local pretrained checkpoints, nnU-Net CLI."""
import math
import re
from pathlib import Path

import pytest
import torch

import _nnunet
from bus_nnunet.errors import UserError
from bus_nnunet.network_architectures import create_model, model_info
from bus_nnunet.network_architectures.attention_unet import CBAM, NonLocalBlock
from bus_nnunet.trainers import attention_unet as att_trainers

REPO = Path(__file__).resolve().parents[1]


def n_params(model, trainable_only=False):
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


@pytest.fixture(scope="module")
def frozen_net():
    torch.manual_seed(0)
    return create_model("attention_unet", in_channels=1, num_classes=2, attention="cbam", freeze_encoder=True)


@pytest.fixture(scope="module")
def timm_checkpoints(tmp_path_factory):
    """Full timm classifiers (ImageNet head included, as downloaded) saved as local checkpoint files."""
    import timm
    folder = tmp_path_factory.mktemp("timm_ckpt")
    paths = {}
    for i, name in enumerate(att_trainers.ENCODER_ENV):
        torch.manual_seed(100 + i)
        model = timm.create_model(name, pretrained=False)
        for m in model.modules():  # non-default running statistics, so "kept fixed" is observable
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
        paths[name] = folder / f"{name}.pth"
        torch.save(model.state_dict(), paths[name])
    return paths


# -- the paper's parameter table ------------------------------------------------------------------
def test_parameter_counts_match_paper_table():
    """Every row of Table 1, built as in the paper (RGB input, 1-channel sigmoid head)."""
    seen = {}
    for row, (encoders, attention, loss, frozen, total, trainable) in att_trainers.PAPER_MODELS.items():
        key = (encoders, attention, frozen)
        if key not in seen:
            net = create_model("attention_unet", in_channels=3, num_classes=1, attention=attention,
                               encoders=att_trainers.ENCODER_SETS[encoders], freeze_encoder=frozen)
            seen[key] = (n_params(net), n_params(net, trainable_only=True))
        assert seen[key] == (total, trainable), f"Model {row}"
    # the headline numbers, spelled out
    assert seen[("RDE", "none", False)][0] == 23_794_557
    assert seen[("RDE", "cbam", False)][0] == 23_881_989
    assert seen[("RDE", "nonlocal", False)][0] == 24_493_277
    assert seen[("RDE", "none", True)][1] == 1_656_641
    assert seen[("RDE", "cbam", True)][1] == 1_744_073
    assert seen[("RDE", "nonlocal", True)][1] == 2_355_361


def test_every_paper_row_has_a_trainer_with_its_configuration():
    for row, (encoders, attention, loss, frozen, _, _) in att_trainers.PAPER_MODELS.items():
        cls = getattr(att_trainers, att_trainers.PAPER_MODEL_TRAINERS[row])
        assert cls.__module__ == "bus_nnunet.trainers.attention_unet" and cls.__name__ in att_trainers.__all__
        assert cls.paper_model == row
        kw = cls.network_kwargs
        assert (tuple(kw["encoders"]), kw["attention"], kw["freeze_encoder"], kw["dropout"]) == (
            att_trainers.ENCODER_SETS[encoders], attention, frozen, 0.3)
        r = cls.recipe
        assert (r.optimizer, r.lr, r.schedule) == ("adam", 1e-4, "constant")
        assert (r.ce_weight, r.dice_weight) == ((1.0, 0.0) if loss == "BCE" else (0.0, 1.0))
    assert "AttUNet_CBAM_BCE_Trainer" in att_trainers.__all__
    assert "AttUNet_NonLocal_Dice_FrozenTrainer" in att_trainers.__all__
    # 3 attentions x 2 losses x 2 + 3 encoder pairs x 2 x 2 paper rows, + 3 x 2 AttUNetSkips readings
    assert len(att_trainers.__all__) == 30
    skips = [n for n in att_trainers.__all__ if n.startswith("AttUNetSkips_")]
    assert len(skips) == 6 and all(getattr(att_trainers, n).network_kwargs["encoder_skips"] for n in skips)


def test_docs_map_each_paper_model_to_its_trainer():
    text = (REPO / "docs" / "attention_unet_models.md").read_text()
    for row, name in att_trainers.PAPER_MODEL_TRAINERS.items():
        assert re.search(rf"^\|\s*{row}\s*\|.*`{name}`", text, re.M), f"Model {row} -> {name} missing"


# -- attention blocks -------------------------------------------------------------------------------
def test_encoder_skips_feed_every_decoder_stage_the_encoders_features_at_its_stride():
    """The skip reading: each decoder stage gets the stride-16/8/4/2 features of all three encoders
    (channels by hand from timm's feature levels), keeps no activations afterwards, and still works
    after a deep copy (the hooks refer to no particular network)."""
    import copy
    torch.manual_seed(0)
    net = create_model("attention_unet", in_channels=1, num_classes=2, attention="cbam", encoder_skips=True).eval()
    # resnet18 layer3/2/1/act1, densenet121 denseblock3/2/1/norm0, efficientnet_b0 blocks.4/2/1/0
    skip_channels = [256 + 1024 + 112, 128 + 512 + 40, 64 + 256 + 24, 64 + 64 + 16]
    stage_inputs = []
    for stage in net.decoder:
        stage.block.register_forward_pre_hook(lambda m, args: stage_inputs.append(tuple(args[0].shape)))
    x = torch.randn(2, 1, 64, 96)
    out = net(x)
    assert out.shape == (2, 2, 64, 96)
    widths = (512 + 1024 + 1280, 512, 256, 128)
    assert stage_inputs == [(2, w + c, 64 * 2 // s, 96 * 2 // s) for w, c, s in zip(widths, skip_channels,
                                                                                    (32, 16, 8, 4))]
    assert all(getattr(net.encoders[e].get_submodule(m), "kept_output", None) is None
               for layers in net.skip_layers for e, m in layers)
    twin = copy.deepcopy(net)
    assert torch.allclose(twin(x), out, atol=1e-6)
    # the skips matter: a change confined to the top-left 8x8 input block moves the top-left logits
    # far more than the bottom-right ones (~190x here; ~3.6x for the Table-1 network, which decodes only
    # the 1/32 bottleneck)
    x2 = x.clone()
    x2[..., :8, :8] += 3.0
    delta = (net(x2) - out).abs()
    assert delta[..., :8, :8].mean() > 20 * delta[..., -8:, -8:].mean()


def test_attention_blocks_keep_shape():
    x = torch.randn(2, 64, 9, 7)
    assert CBAM(64)(x).shape == x.shape
    assert NonLocalBlock(64)(x).shape == x.shape


def test_cbam_constant_input_by_hand():
    """Constant channel values c_k; MLP hidden = sum(c) (one unit, weights 1), back-projection 1;
    spatial conv averages the channel-mean map over 7x7 (zero padded), ignores the max map."""
    c = [1.0, -1.0, 0.5, 0.0, 2.0, -2.0, 1.0, 0.0]
    block = CBAM(8, reduction=8)
    with torch.no_grad():
        block.channel.mlp[0].weight.fill_(1.0)   # 8 -> 1
        block.channel.mlp[2].weight.fill_(1.0)   # 1 -> 8
        block.spatial.conv.weight.zero_()
        block.spatial.conv.weight[0, 0].fill_(1 / 49)
    x = torch.tensor(c).view(1, 8, 1, 1).expand(1, 8, 10, 10).contiguous()
    out = block(x)

    sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    s = sum(c)                                  # avg-pool = max-pool = c: MLP gives s twice
    channel_gate = sig(2 * max(s, 0.0))
    mean_after = channel_gate * s / 8
    interior = sig(mean_after)                  # 49 taps of mean/49
    corner = sig(mean_after * 16 / 49)          # 4x4 taps inside the image at a corner
    edge = sig(mean_after * 28 / 49)            # 4x7 taps on a border row
    expected_interior = torch.tensor([ck * channel_gate * interior for ck in c])
    assert torch.allclose(out[0, :, 5, 5], expected_interior, atol=1e-6)
    assert torch.allclose(out[0, :, 0, 0], torch.tensor([ck * channel_gate * corner for ck in c]), atol=1e-6)
    assert torch.allclose(out[0, :, 0, 5], torch.tensor([ck * channel_gate * edge for ck in c]), atol=1e-6)


def test_nonlocal_starts_as_identity_and_matches_embedded_gaussian():
    torch.manual_seed(0)
    block = NonLocalBlock(16).eval()
    x = torch.randn(2, 16, 5, 6)
    assert torch.equal(block(x), x)  # zero-initialised W
    torch.nn.init.normal_(block.out.weight)
    flat = lambda t: t.flatten(2)  # noqa: E731  (B, C/2, N)
    theta, phi, g = flat(block.theta(x)), flat(block.phi(x)), flat(block.g(x))
    attn = torch.softmax(theta.transpose(1, 2) @ phi, dim=-1)  # (B, N, N), no 1/sqrt(d)
    y = (attn @ g.transpose(1, 2)).transpose(1, 2).reshape(2, 8, 5, 6)
    assert torch.allclose(block(x), x + block.out(y), atol=1e-5)


# -- network behaviour --------------------------------------------------------------------------------
def test_grayscale_input_two_class_logits_and_deterministic_eval(frozen_net):
    frozen_net.eval()
    x = torch.randn(1, 1, 32, 64)
    with torch.no_grad():
        a, b = frozen_net(x), frozen_net(x)
    assert a.shape == (1, 2, 32, 64) and torch.equal(a, b)
    with pytest.raises(ValueError, match="encoders"):
        create_model("attention_unet", encoders=("resnet50",))


def test_frozen_encoder_unchanged_by_training_step(frozen_net):
    net = frozen_net.train()
    assert all(not m.training for m in net.encoders.modules())  # BN statistics stay fixed
    enc_before = {k: v.clone() for k, v in net.encoders.state_dict().items()}  # params + BN buffers
    dec_before = {k: v.clone() for k, v in net.decoder.state_dict().items()}
    trainable = [p for p in net.parameters() if p.requires_grad]
    assert not any(p.requires_grad for p in net.encoders.parameters())
    opt = torch.optim.Adam(trainable, lr=1e-2)
    x, y = torch.randn(2, 1, 32, 32), torch.randint(0, 2, (2, 32, 32))
    torch.nn.functional.cross_entropy(net(x), y).backward()
    opt.step()
    assert all(torch.equal(v, enc_before[k]) for k, v in net.encoders.state_dict().items())
    assert any(not torch.equal(v, dec_before[k]) for k, v in net.decoder.state_dict().items())


def test_pretrained_loading_drops_classifier_and_adapts_stem(timm_checkpoints):
    path = timm_checkpoints["resnet18"]
    saved = torch.load(path, weights_only=True)
    net = create_model("attention_unet", in_channels=1, encoders=("resnet18",))
    encoder = net.encoders["resnet18"]
    load = {part.slot: part.load for part in model_info("attention_unet").pretrained}["resnet18"]  # the registry's loader
    report = str(load(net, str(path)))
    assert "classifier dropped (fc.weight, fc.bias)" in report
    state = encoder.state_dict()
    assert torch.allclose(state["conv1.weight"], saved["conv1.weight"].sum(dim=1, keepdim=True))
    assert torch.equal(state["layer4.1.conv2.weight"], saved["layer4.1.conv2.weight"])
    assert torch.equal(state["bn1.running_var"], saved["bn1.running_var"])
    with pytest.raises(ValueError, match="does not fit"):
        load(net, str(timm_checkpoints["densenet121"]))


def test_frozen_trainer_refuses_random_encoders():
    encoders = att_trainers.ENCODER_SETS["RD"]
    with pytest.raises(UserError) as err:
        att_trainers.check_frozen_encoders_pretrained("AttUNet_RD_Plain_BCE_FrozenTrainer", encoders,
                                                      {"BUS_NNUNET_TIMM_RESNET18": "/w/r18.pth"})
    msg = str(err.value)
    assert "meaningless" in msg and "BUS_NNUNET_TIMM_DENSENET121" in msg
    assert "BUS_NNUNET_TIMM_RESNET18" not in msg  # only the missing one is asked for
    assert "BUS_NNUNET_ALLOW_FROZEN_RANDOM=1" in msg and "AttUNet_RD_Plain_BCE_Trainer" in msg
    att_trainers.check_frozen_encoders_pretrained("x", encoders, {"BUS_NNUNET_ALLOW_FROZEN_RANDOM": "1"})
    att_trainers.check_frozen_encoders_pretrained("x", encoders, {"BUS_NNUNET_TIMM_RESNET18": "a",
                                                                  "BUS_NNUNET_TIMM_DENSENET121": "b"})


# -- nnU-Net CLI -----------------------------------------------------------------------------------------
def test_frozen_cbam_trainer_trains_and_predicts_with_local_weights(planned_dataset, timm_checkpoints, tmp_path):
    """nnUNetv2_train finds the trainer, loads the three local timm checkpoints into the frozen
    encoders, trains without changing them (parameters or BN statistics), and nnUNetv2_predict runs."""
    from timm.models import adapt_input_conv

    ds, trainer = planned_dataset, "AttUNet_CBAM_Dice_FrozenTrainer"
    env = {**ds.results_env(tmp_path), **{att_trainers.ENCODER_ENV[n]: str(p) for n, p in timm_checkpoints.items()}}
    proc = _nnunet.train_cli(ds, env, trainer)
    assert "pretrained efficientnet_b0" in proc.stdout and "classifier dropped" in proc.stdout
    saved = torch.load(_nnunet.model_folder(env, trainer) / "fold_0" / "checkpoint_final.pth",
                       map_location="cpu", weights_only=False)
    weights = saved["network_weights"]
    for name, path in timm_checkpoints.items():
        ref = torch.load(path, weights_only=True)
        stem = {"resnet18": "conv1.weight", "densenet121": "features.conv0.weight",
                "efficientnet_b0": "conv_stem.weight"}[name]
        ref[stem] = adapt_input_conv(1, ref[stem])
        for key in ("classifier.weight", "classifier.bias", "fc.weight", "fc.bias"):
            ref.pop(key, None)
        for key, value in ref.items():
            assert torch.equal(weights[f"encoders.{name}.{key}"], value), f"{name}.{key} changed"
    n_trainable = sum(1 for k in weights if not k.startswith("encoders.") and "running_" not in k
                      and "num_batches_tracked" not in k)
    assert len(saved["optimizer_state"]["param_groups"][0]["params"]) == n_trainable

    out = tmp_path / "pred"
    _nnunet.predict_and_check_masks(ds, env, trainer, out)


def test_frozen_trainer_without_weights_refused_by_nnunet_train(planned_dataset, tmp_path):
    ds, trainer = planned_dataset, "AttUNet_RD_Plain_BCE_FrozenTrainer"
    env = {**ds.results_env(tmp_path), **{v: "" for v in att_trainers.ENCODER_ENV.values()},
           "BUS_NNUNET_ALLOW_FROZEN_RANDOM": ""}
    proc = _nnunet.run(["nnUNetv2_train", ds.dataset_id, "2d", 0, "-tr", trainer, "-device", "cpu"],
                       {**env, **_nnunet.SMOKE_SCHEDULE}, check=False)
    assert proc.returncode != 0
    assert "meaningless" in proc.stderr and "BUS_NNUNET_TIMM_RESNET18" in proc.stderr
    assert not (_nnunet.model_folder(env, trainer) / "fold_0" / "checkpoint_final.pth").exists()
