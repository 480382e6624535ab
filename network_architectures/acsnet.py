"""ACSNet: joint breast-ultrasound lesion segmentation and benign/malignant classification.

He et al., "ACSNet" (Computers in Biology and Medicine, 2024); reference code
``qqhe-frank/BUS-segmentation-and-classification`` (``MyModel.py``).  Layout:

* ResNet-18 encoder (torchvision layout, so ImageNet checkpoints load by name): E0 (stem, 1/2),
  E1 (maxpool + layer1, 1/4), E2..E4 (layer2..4, 1/8..1/32);
* a **gate unit** (:class:`GateUnit`, the code's ``GSA``) on every encoder output;
* a decoder of 1x1-conv + bilinear x2 (align_corners=True) up-steps, GroupNorm conv blocks and a
  **Deformable Spatial Attention Module** (:class:`DeformableSpatialAttention`, DCNv2 via
  ``torchvision.ops.deform_conv2d``) at 1/16 and 1/8;
* a **multi-scale channel-attention classification branch** (:class:`ClassificationBranch`) on
  E3, E4 and the first decoder feature D1.

nnU-Net integration: ``forward(x)`` returns the segmentation logits only (``num_classes``
channels incl. background), so nnU-Net's predictor, mirroring and ensembling work unchanged;
``forward(x, return_classification=True)`` returns ``(seg_logits, class_logits)`` and
:meth:`ACSNet.forward_classification` computes the class logits alone (encoder + first decoder
stage).  The multi-task uncertainty loss weights of the paper (``AutomaticWeightedLoss``) live in
the module as :attr:`ACSNet.loss_weighting`, so they are optimised and checkpointed with the
network; they take no part in ``forward``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bus_nnunet.network_architectures._layers import TorchvisionResNetEncoder
from bus_nnunet.network_architectures._pretrained import LoadReport, PretrainedPart, load_resnet_encoder
from bus_nnunet.network_architectures._registry import register_model

__all__ = ["ACSNet", "DeformConv2d", "deform_conv2d_sampling", "GateUnit", "DeformableSpatialAttention", "ChannelAttention",
           "ClassificationBranch", "UncertaintyLossWeighting", "acsnet"]


def upsample2x(x: torch.Tensor) -> torch.Tensor:
    """Bilinear x2 with align_corners=True (the reference's ``UpsamplingBilinear2d``)."""
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)


def conv_gn_relu(in_ch: int, out_ch: int, groups: int, kernel_size: int = 3) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, kernel_size, padding=kernel_size // 2),
                         nn.GroupNorm(groups, out_ch), nn.ReLU(inplace=True))


def deform_conv2d_sampling(x: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor,
                           weight: torch.Tensor) -> torch.Tensor:
    """Modulated deformable 3x3 conv (stride 1, padding 1, one offset group) written as bilinear
    sampling (``grid_sample``, zeros outside) + matrix product; same result and layout as
    ``torchvision.ops.deform_conv2d``, about twice as fast on CPU (whose torchvision kernel,
    backward especially, is single-threaded)."""
    b, c, h, w = x.shape
    k = weight.shape[-1] * weight.shape[-2]
    ys = torch.arange(h, dtype=x.dtype, device=x.device)[:, None]
    xs = torch.arange(w, dtype=x.dtype, device=x.device)[None, :]
    taps = torch.arange(k, device=x.device)
    dy = (taps // weight.shape[-1] - 1).to(x.dtype)[:, None, None]
    dx = (taps % weight.shape[-1] - 1).to(x.dtype)[:, None, None]
    off = offset.view(b, k, 2, h, w)  # torchvision layout: (dy_k, dx_k) at channels 2k, 2k+1
    py, px = ys + dy + off[:, :, 0], xs + dx + off[:, :, 1]
    grid = torch.stack([2 * px / (w - 1) - 1, 2 * py / (h - 1) - 1], dim=-1).view(b, k * h, w, 2)
    sampled = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    columns = (sampled.view(b, c, k, h, w) * mask[:, None]).view(b, c * k, h * w)
    return torch.matmul(weight.reshape(weight.shape[0], -1), columns).view(b, -1, h, w)


class DeformConv2d(nn.Module):
    """Modulated deformable 3x3 convolution (DCNv2), one offset group, no bias.

    ``torchvision.ops.deform_conv2d`` does the work (on CPU the equivalent, faster
    :func:`deform_conv2d_sampling`).  Offsets (torchvision's interleaved (dy, dx) layout) and the modulation mask are predicted by
    3x3 convolutions of the input, both initialised to zero (offsets 0, mask 0.5).  Runs in
    float32 even under autocast: the bilinear sampling gradients are not reliable in half
    precision.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 padding: int = 1):
        super().__init__()
        self.stride, self.padding = stride, padding
        k2 = kernel_size * kernel_size
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        nn.init.kaiming_uniform_(self.weight, a=5 ** 0.5)  # nn.Conv2d's default
        self.offset_conv = nn.Conv2d(in_channels, 2 * k2, kernel_size, stride, padding)
        self.mask_conv = nn.Conv2d(in_channels, k2, kernel_size, stride, padding)
        for conv in (self.offset_conv, self.mask_conv):
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from torchvision.ops import deform_conv2d
        with torch.autocast(device_type=x.device.type, enabled=False):
            if x.dtype in (torch.float16, torch.bfloat16):
                x = x.float()
            offset = self.offset_conv(x.to(self.offset_conv.weight.dtype)).to(x.dtype)
            mask = torch.sigmoid(self.mask_conv(x.to(self.mask_conv.weight.dtype))).to(x.dtype)
            weight = self.weight.to(x.dtype)
            if (x.device.type == "cpu" and self.stride == 1 and self.padding == 1 and weight.shape[-1] == 3
                    and min(x.shape[-2:]) > 1):
                return deform_conv2d_sampling(x, offset, mask, weight)
            return deform_conv2d(x, offset, weight, None, stride=self.stride, padding=self.padding, mask=mask)


class GateUnit(nn.Module):
    """The paper's gate unit (code: ``GSA``): a per-sample scalar gate, mean of one sigmoid map plus
    max of another, scales the skip, followed by conv + GroupNorm + ReLU."""

    def __init__(self, channels: int):
        super().__init__()
        hidden = channels // 8
        self.gate = nn.Sequential(nn.Conv2d(channels, hidden, 3, padding=1), nn.GroupNorm(channels // 16, hidden),
                                  nn.ReLU(inplace=True), nn.Conv2d(hidden, 2, 3, padding=1))
        self.out = conv_gn_relu(channels, channels, channels // 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = torch.sigmoid(self.gate(x))
        scale = s[:, 0].mean(dim=(1, 2)) + s[:, 1].amax(dim=(1, 2))
        return self.out(x * scale[:, None, None, None].to(x.dtype))


class DeformableSpatialAttention(nn.Module):
    """DSA module: DCN -> mean- and max-map spatial attentions -> concat -> DCN."""

    def __init__(self, channels: int):
        super().__init__()
        self.dcn1 = DeformConv2d(channels, channels)
        self.norm1 = nn.GroupNorm(channels // 4, channels)
        self.mean_attention = nn.Conv2d(1, 1, 3, padding=1)
        self.max_attention = nn.Conv2d(1, 1, 3, padding=1)
        self.dcn2 = DeformConv2d(2 * channels, channels)
        self.norm2 = nn.GroupNorm(channels // 4, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c1 = F.relu(self.norm1(self.dcn1(x)))
        a = torch.sigmoid(self.mean_attention(c1.mean(dim=1, keepdim=True)))
        m = torch.sigmoid(self.max_attention(c1.amax(dim=1, keepdim=True)))
        return F.relu(self.norm2(self.dcn2(torch.cat([a * c1, m * c1], dim=1))))


class ChannelAttention(nn.Module):
    """``CA_Module``: concatenated [avg; max] descriptors -> MLP (2C -> C/16 -> C) -> sigmoid gate."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(2 * channels, channels // reduction), nn.ReLU(inplace=True),
                                 nn.Linear(channels // reduction, channels), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        descriptor = torch.cat([x.mean(dim=(2, 3)), x.amax(dim=(2, 3))], dim=1)
        return F.relu(x * self.mlp(descriptor)[:, :, None, None])


class ClassificationBranch(nn.Module):
    """Multi-scale channel-attention classifier on E3 (1/16), E4 (1/32), D1 (1/16)."""

    def __init__(self, num_classes: int = 2):
        super().__init__()
        self.attention_e3 = ChannelAttention(256)
        self.attention_e4 = ChannelAttention(512)
        self.attention_d1 = ChannelAttention(512)
        self.head = nn.Sequential(nn.Linear(1280, 640), nn.ReLU(inplace=True), nn.Linear(640, num_classes))

    def forward(self, e3: torch.Tensor, e4: torch.Tensor, d1: torch.Tensor) -> torch.Tensor:
        fused = torch.cat([self.attention_e3(e3), upsample2x(self.attention_e4(e4)), self.attention_d1(d1)], dim=1)
        return self.head(fused.mean(dim=(2, 3)))


class UncertaintyLossWeighting(nn.Module):
    """Learnable multi-task weighting (``AutomaticWeightedLoss``, Liebel & Koerner 2018):
    ``L = sum_t 0.5 / sigma_t**2 * L_t + log(1 + sigma_t**2)``, sigma initialised to 1.

    Bounded below (by 0) only when every task loss is >= 0: with a negative ``L_t``, sigma_t -> 0
    sends the objective to -inf and the task's weight to infinity.  A negative task loss is
    therefore an error, not something to optimise (nnU-Net's soft Dice is -Dice: feed 1 - Dice).
    """

    def __init__(self, num_tasks: int = 2):
        super().__init__()
        self.sigma = nn.Parameter(torch.ones(num_tasks))

    def forward(self, *losses: torch.Tensor) -> torch.Tensor:
        if len(losses) != self.sigma.numel():
            raise ValueError(f"expected {self.sigma.numel()} task losses, got {len(losses)}")
        for i, loss in enumerate(losses):
            if loss.detach().min() < 0:
                raise ValueError(f"task loss {i} is {loss.detach().min().item():.4g} < 0: uncertainty weighting "
                                 f"needs task losses >= 0 (it is unbounded below otherwise); use 1 - Dice, not -Dice")
        s2 = self.sigma.float() ** 2
        return sum(0.5 / s2[i] * loss + torch.log1p(s2[i]) for i, loss in enumerate(losses))

    def task_weights(self) -> torch.Tensor:
        """The factor ``0.5 / sigma_t**2`` each task loss is multiplied by."""
        return 0.5 / self.sigma.detach().float() ** 2


class ACSNet(nn.Module):
    """ACSNet (He et al. 2024; released ``MyModel.py``). Input H and W must be multiples of :attr:`size_divisor`."""

    size_divisor = 32

    def __init__(self, in_channels: int = 1, num_classes: int = 2, num_classification_classes: int = 2):
        super().__init__()
        self.num_classification_classes = num_classification_classes
        self.encoder = TorchvisionResNetEncoder(18, in_channels, stem_init="kaiming")
        self.gate4, self.gate3 = GateUnit(512), GateUnit(256)
        self.gate2, self.gate1, self.gate0 = GateUnit(128), GateUnit(64), GateUnit(64)
        # decoder stage 1 (1/16)
        self.up1 = nn.Sequential(nn.Conv2d(512, 256, 1), nn.ReLU(inplace=True))
        self.block1 = nn.Sequential(conv_gn_relu(512, 512, 16), conv_gn_relu(512, 512, 16))
        self.dsa1 = DeformableSpatialAttention(512)
        # stage 2 (1/8)
        self.up2 = nn.Sequential(nn.Conv2d(512, 128, 1), nn.ReLU(inplace=True))
        self.block2 = nn.Sequential(conv_gn_relu(256, 256, 8), conv_gn_relu(256, 256, 8))
        self.dsa2 = DeformableSpatialAttention(256)
        # stage 3 (1/4): no DSA
        self.up3 = nn.Sequential(nn.Conv2d(256, 64, 1), nn.ReLU(inplace=True))
        self.block3 = nn.Sequential(conv_gn_relu(128, 128, 4), conv_gn_relu(128, 128, 4))
        # stage 4 (1/2)
        self.up4 = nn.Sequential(nn.Conv2d(128, 64, 1), nn.ReLU(inplace=True))
        self.block4 = nn.Sequential(nn.Conv2d(128, 128, 1), nn.ReLU(inplace=True), conv_gn_relu(128, 128, 4))
        # full-resolution head
        self.seg_head = nn.Sequential(conv_gn_relu(128, 128, 4), nn.Conv2d(128, num_classes, 1))
        self.classifier = ClassificationBranch(num_classification_classes)
        self.loss_weighting = UncertaintyLossWeighting(2)

    def reset_classifier(self, num_classification_classes: int) -> None:
        """Replace the last classification layer (timm's name for it) for a new class count."""
        if num_classification_classes != self.num_classification_classes:
            self.classifier.head[-1] = nn.Linear(640, num_classification_classes)
            self.num_classification_classes = num_classification_classes

    def _encode_to_d1(self, x: torch.Tensor):
        h, w = x.shape[-2:]
        if h % self.size_divisor or w % self.size_divisor:
            raise ValueError(f"ACSNet needs input sides divisible by 32, got {h}x{w}")
        e0, e1, e2, e3, e4 = self.encoder(x)
        d1 = self.dsa1(self.block1(torch.cat([self.gate3(e3), upsample2x(self.up1(self.gate4(e4)))], dim=1)))
        return (e0, e1, e2, e3, e4), d1

    def forward_classification(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits only (the decoder stages after D1 are skipped)."""
        (_, _, _, e3, e4), d1 = self._encode_to_d1(x)
        return self.classifier(e3, e4, d1)

    def forward(self, x: torch.Tensor, return_classification: bool = False):
        (e0, e1, e2, e3, e4), d1 = self._encode_to_d1(x)
        d2 = self.dsa2(self.block2(torch.cat([self.gate2(e2), upsample2x(self.up2(d1))], dim=1)))
        d3 = self.block3(torch.cat([self.gate1(e1), upsample2x(self.up3(d2))], dim=1))
        d4 = self.block4(torch.cat([self.gate0(e0), upsample2x(self.up4(d3))], dim=1))
        seg = self.seg_head(upsample2x(d4))
        if return_classification:
            return seg, self.classifier(e3, e4, d1)
        return seg

    def count_model_parameters(self) -> int:
        """Parameters of the network proper (without the two learnable loss weights)."""
        return sum(p.numel() for n, p in self.named_parameters() if not n.startswith("loss_weighting."))


def load_imagenet_encoder(network: ACSNet, source) -> LoadReport:
    """ImageNet ResNet-18 (torchvision or timm layout) into ACSNet's encoder."""
    return load_resnet_encoder(network.encoder, source, "ResNet-18")


@register_model(size_divisor=ACSNet.size_divisor, min_size=ACSNet.size_divisor, deep_supervision_strides=None,
                pretrained=[PretrainedPart("resnet18.tv_in1k", load_imagenet_encoder)],
                paper="He et al., ACSNet, Computers in Biology and Medicine 2024 (segmentation + classification)",
                requires=())
def acsnet(in_channels: int = 1, num_classes: int = 2, deep_supervision: bool = False,
           num_classification_classes: int = 2, **kwargs) -> ACSNet:
    """ACSNet with a ResNet-18 encoder; ``num_classification_classes`` image-level classes
    (2 = benign/malignant as in the paper). It has a single segmentation output, so
    ``deep_supervision`` has no effect."""
    if kwargs:
        raise TypeError(f"acsnet: unexpected arguments {sorted(kwargs)}")
    return ACSNet(in_channels, num_classes, num_classification_classes)
