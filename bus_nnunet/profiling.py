"""Network cost profiling for every trainer: parameters, MACs, peak memory and latency.

Conventions (stated in every report):

* **MACs** (:func:`count_macs`, :data:`MACS_METHOD`) are counted by ``torch.utils.flop_counter`` at
  the operator level: every convolution (grouped, transposed), linear layer, matmul/bmm/einsum and
  attention call, plus torchvision's deformable convolution; FLOPs = 2 x MACs. Elementwise work
  (norms, activations, pooling, interpolation, selective-scan recurrences, grid sampling) is not
  counted. A module is counted once per call, however often it is referenced.
* **MACs by thop's rules** (:func:`count_macs_thop_rules`) are what segmentation papers quote as
  "GFLOPs" (thop's MACs; e.g. SS-Net's 4.93 G): per-module rules, so functional ops (``@``,
  einsum, ``F.conv2d``) count 0, norms count 2-4 per element and a stride-s transposed conv
  s^2 times its MACs. Reported only to compare with published figures.
* **Peak memory** on CUDA is ``torch.cuda.max_memory_allocated`` minus the memory allocated
  before the step (weights, input); on CPU it is the increase of the process's peak resident set
  size (``VmHWM``, reset via ``/proc/self/clear_refs`` just before the step) over the resident
  size just before the step, measured in a fresh subprocess for each of forward and training step (so the high-water marks
  do not mix). CPU numbers include allocator caching and are coarser.
* **Training step** = forward with deep supervision as the trainer trains, cross-entropy on a
  random target at every output, backward, and an SGD (momentum 0.99, Nesterov) step.
* **Latency** is the median wall time of inference forwards (eval mode, no_grad, batch given).
"""
from __future__ import annotations

import copy
import os
import json
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import List, Optional, Sequence, Tuple

from bus_nnunet.registration import trainer_class

MEMORY_METHOD = {"cuda": "torch.cuda.max_memory_allocated delta",
                 "cpu": "peak RSS (VmHWM) increase in a fresh subprocess"}
#: nnU-Net trainers whose network comes from the plans (PlainConvUNet) instead of our registry
NNUNET_PLAN_TRAINERS = ("nnUNetTrainer",)


@dataclass
class ProfileResult:
    trainer: str
    input_shape: Tuple[int, ...]
    num_classes: int
    device: str
    params_total: int = 0
    params_trainable: int = 0
    params_thop_rules: Optional[int] = None
    macs: Optional[int] = None
    flops: Optional[int] = None
    macs_thop_rules: Optional[int] = None
    forward_peak_bytes: Optional[int] = None
    train_step_peak_bytes: Optional[int] = None
    memory_method: str = ""
    latency_ms: Optional[float] = None
    network: str = ""
    notes: List[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------------------- networks
def default_plain_unet_2d(in_channels: int, num_classes: int, size: Sequence[int], deep_supervision: bool = False):
    """nnU-Net's default 2D PlainConvUNet for a patch ``size`` (what ExperimentPlanner plans for
    isotropic 2D data): 3x3 convs, 2 per stage in encoder and decoder, features min(512, 32*2**i),
    an axis is pooled by 2 while it stays >= 4 pixels (nnU-Net's 4x4 minimal bottleneck),
    InstanceNorm + LeakyReLU, conv bias."""
    import torch.nn as nn
    from dynamic_network_architectures.architectures.unet import PlainConvUNet
    current = [int(s) for s in size]
    strides = [[1] * len(current)]
    while True:
        step = [2 if s >= 8 and s % 2 == 0 else 1 for s in current]
        if all(s == 1 for s in step):
            break
        strides.append(step)
        current = [s // st for s, st in zip(current, step)]
    n_stages = len(strides)
    return PlainConvUNet(
        input_channels=in_channels, n_stages=n_stages,
        features_per_stage=[min(512, 32 * 2 ** i) for i in range(n_stages)], conv_op=nn.Conv2d,
        kernel_sizes=[[3, 3]] * n_stages, strides=strides, n_conv_per_stage=[2] * n_stages,
        num_classes=num_classes, n_conv_per_stage_decoder=[2] * (n_stages - 1), conv_bias=True,
        norm_op=nn.InstanceNorm2d, norm_op_kwargs={"eps": 1e-5, "affine": True}, dropout_op=None,
        nonlin=nn.LeakyReLU, nonlin_kwargs={"inplace": True}, deep_supervision=deep_supervision)


def build_network(trainer_name: str, in_channels: int, num_classes: int, size: Sequence[int],
                  deep_supervision: bool = False, plans: Optional[str] = None, configuration: str = "2d"):
    """The network ``trainer_name`` trains, as ``(module, description)``.

    Registry networks come from ``TrainerClass.create_network``; nnU-Net's plan-built U-Net
    (``nnUNetTrainer``, ``nnUNetTrainerUS``) from ``plans`` (a plans.json) if given, else from
    :func:`default_plain_unet_2d`.
    """
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from bus_nnunet.trainers.base import BusNetworkTrainer
    cls = trainer_class(trainer_name)
    if issubclass(cls, BusNetworkTrainer):
        net = cls.create_network(in_channels, num_classes, deep_supervision, tuple(size))
        return net, f"{cls.network_name} (registry)"
    if not issubclass(cls, nnUNetTrainer):
        raise TypeError(f"{trainer_name} is not an nnU-Net trainer")
    if plans:
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
        with open(plans) as f:
            plans_manager = PlansManager(json.load(f))
        cm = plans_manager.get_configuration(configuration)
        net = cls.build_network_architecture(plans_manager, cm, in_channels, num_classes, deep_supervision)
        return net, f"{cm.network_arch_class_name.split('.')[-1]} from {plans} ({configuration})"
    net = default_plain_unet_2d(in_channels, num_classes, size, deep_supervision)
    return net, f"PlainConvUNet, nnU-Net 2D defaults for {list(size)} ({len(net.encoder.stages)} stages)"


# ------------------------------------------------------------------------------------ measurements
def count_parameters(net) -> Tuple[int, int]:
    """(total, trainable) parameter counts."""
    params = list(net.parameters())
    return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)


MACS_METHOD = ("torch.utils.flop_counter (FLOPs / 2): every convolution incl. grouped and transposed, "
               "linear, matmul/bmm/einsum and attention call, and torchvision's deformable convolution; "
               "elementwise work (norms, activations, pooling, interpolation, selective-scan "
               "recurrences, grid sampling) is not counted; a module counts once per call")


def _example_input(net, example):
    """``example`` as a tensor on the network's device (a shape gives a standard-normal tensor)."""
    import torch
    if isinstance(example, torch.Tensor):
        return example
    param = next(iter(net.parameters()), None)
    return torch.randn(*[int(s) for s in example], device=param.device if param is not None else "cpu")


def _deform_conv2d_flops(input_shape, weight_shape, *args, out_shape=None, **kwargs) -> int:
    """FLOPs of ``torchvision::deform_conv2d``: those of the convolution with the same weight
    (the bilinear sampling of the offsets is elementwise and, like interpolation, not counted)."""
    import math
    return 2 * out_shape[0] * out_shape[1] * math.prod(out_shape[2:]) * math.prod(weight_shape[1:])


def count_macs(net, example) -> int:
    """Multiply-accumulates of one inference forward of ``net`` on ``example`` (a tensor, or an
    input shape such as ``(1, 1, 256, 256)``), counted by ``torch.utils.flop_counter``
    (:data:`MACS_METHOD`).

    Runs in eval mode without gradients on the network's device and restores its training flag.
    Counting at the operator level makes it independent of how the network is written: a
    module referenced twice (nnU-Net's decoder keeps the encoder) counts once per call, and
    functional convolutions, ``@`` and einsum count like their module versions.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    custom = {}
    try:
        import torchvision.ops  # noqa: F401  (registers torch.ops.torchvision)
        custom[torch.ops.torchvision.deform_conv2d] = _deform_conv2d_flops
    except (ImportError, AttributeError):
        pass
    x = _example_input(net, example)
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=custom) as counter:
            net(x)
    finally:
        net.train(was_training)
    return int(counter.get_total_flops()) // 2


def count_macs_thop_rules(net, example) -> int:
    """MACs by ``thop``'s per-module rules: the convention of published "GFLOPs" figures.

    thop's own ``profile`` walks ``named_children`` and hooks a module once per parent, so a
    module reachable twice (nnU-Net's decoder keeps a reference to the encoder; its conv blocks
    list each conv twice) is counted twice (28.0 instead of 4.0 G for nnU-Net's 2D U-Net at
    128x128). Here every distinct module gets one hook, and a module called several times in a
    forward is counted once per call. thop's rules themselves are kept: ops without a module
    rule count 0, norms count per element, transposed convs count per output pixel. Runs on a
    CPU copy of ``net``.
    """
    import torch
    from thop.profile import register_hooks
    model = copy.deepcopy(net).cpu().eval()
    counted, handles = [], []
    for module in {id(m): m for m in model.modules()}.values():
        rule = register_hooks.get(type(module))
        if rule is None:
            continue
        module.register_buffer("total_ops", torch.zeros(1, dtype=torch.float64), persistent=False)
        handles.append(module.register_forward_hook(rule))
        counted.append(module)
    x = _example_input(model, example).cpu()
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return int(sum(m.total_ops.item() for m in counted))


def count_params_thop_rules(net) -> int:
    """Parameters as ``thop.profile`` reports them (the "Params" of papers that profile with thop).

    thop counts a module it has a rule for with all its parameters; any other module only
    through its sub-modules, so raw ``nn.Parameter`` tensors held by modules without a rule (SSM
    matrices, learnable scalars, norms written by hand) are left out: SS-Net reports 16,210,955
    of its 17,535,538 trainable parameters. Each distinct module counts once.
    """
    import torch.nn as nn
    from thop.profile import register_hooks
    seen = set()

    def count(module) -> int:
        if id(module) in seen:
            return 0
        seen.add(id(module))
        if type(module) in register_hooks and not isinstance(module, (nn.Sequential, nn.ModuleList)):
            return sum(p.numel() for p in module.parameters())
        return sum(count(child) for child in module.children())

    return count(net)


def _first_output(out):
    return out[0] if isinstance(out, (list, tuple)) else out


def training_step(net, x, optimizer, num_classes: int):
    """One forward/backward/SGD step with CE on a random target at every (deep-supervision) output."""
    import torch
    import torch.nn.functional as Fn
    net.train()
    optimizer.zero_grad(set_to_none=True)
    outputs = net(x)
    outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
    target = torch.randint(0, num_classes, (x.shape[0], 1, *x.shape[2:]), device=x.device).float()
    loss = 0.0
    for out in outputs:
        t = Fn.interpolate(target, size=out.shape[2:], mode="nearest")[:, 0].long()
        loss = loss + Fn.cross_entropy(out, t)
    loss.backward()
    optimizer.step()


def make_optimizer(net):
    import torch
    return torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.99, nesterov=True)


def measure_latency(net, x, warmup: int = 3, repeats: int = 10) -> float:
    """Median milliseconds of an eval-mode no-grad forward."""
    import torch
    net.eval()
    cuda = x.device.type == "cuda"
    times = []
    with torch.no_grad():
        for i in range(warmup + repeats):
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            _first_output(net(x))
            if cuda:
                torch.cuda.synchronize()
            if i >= warmup:
                times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def peak_memory_cuda(net, x, train: bool, num_classes: int) -> int:
    """Peak extra CUDA memory (bytes) of a forward (no_grad) or a training step."""
    import torch
    optimizer = make_optimizer(net) if train else None
    if train:  # optimizer state exists after the first step; measure a steady-state step
        training_step(net, x, optimizer, num_classes)
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    if train:
        training_step(net, x, optimizer, num_classes)
    else:
        net.eval()
        with torch.no_grad():
            _first_output(net(x))
    torch.cuda.synchronize()
    return int(torch.cuda.max_memory_allocated() - base)


def _measure_cpu_memory_here(spec: dict) -> int:
    """Inside the subprocess: build, run the step once, return peak RSS increase (bytes)."""
    import torch
    torch.set_num_threads(int(spec.get("threads", 1)))
    train = spec["mode"] == "train"
    net, _ = build_network(spec["trainer"], spec["in_channels"], spec["num_classes"], spec["size"],
                           deep_supervision=train and spec["deep_supervision"], plans=spec.get("plans"))
    x = torch.randn(spec["batch_size"], spec["in_channels"], *spec["size"])
    optimizer = make_optimizer(net) if train else None
    before = rss_bytes()
    hwm_reset = reset_peak_rss()
    if not hwm_reset:  # without a reset the import-time high-water mark is the baseline
        before = max(before, peak_rss_bytes())
    if train:
        training_step(net, x, optimizer, spec["num_classes"])
    else:
        net.eval()
        with torch.no_grad():
            _first_output(net(x))
    peak = peak_rss_bytes()
    return max(0, int(peak - before))


def peak_memory_cpu(spec: dict, timeout: int = 600) -> int:
    """Peak RSS increase of a forward or training step, measured in a fresh Python process."""
    proc = subprocess.run([sys.executable, "-m", "bus_nnunet.profiling", json.dumps(spec)],
                          capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"memory measurement failed: {proc.stderr[-2000:]}")
    return int(json.loads(proc.stdout.strip().splitlines()[-1])["peak_bytes"])


def profile_trainer(trainer: str, size: Sequence[int] = (256, 256), in_channels: int = 1, num_classes: int = 2,
                    device: str = "cpu", batch_size: int = 1, plans: Optional[str] = None,
                    memory: bool = True, latency_repeats: int = 10, threads: Optional[int] = None) -> ProfileResult:
    """Parameters, MACs, peak memory (forward and training step) and latency of a trainer's network."""
    import torch
    from bus_nnunet.trainers.base import BusNetworkTrainer
    size = tuple(int(s) for s in size)
    cls = trainer_class(trainer)
    trains_with_ds = bool(getattr(cls, "deep_supervision", True)) if issubclass(cls, BusNetworkTrainer) else True
    res = ProfileResult(trainer, (batch_size, in_channels, *size), num_classes, device,
                        memory_method=MEMORY_METHOD["cuda" if device.startswith("cuda") else "cpu"])
    net, res.network = build_network(trainer, in_channels, num_classes, size, deep_supervision=False, plans=plans)
    res.params_total, res.params_trainable = count_parameters(net)
    try:
        res.params_thop_rules = count_params_thop_rules(net)
    except ImportError as e:  # thop not installed; keep the other numbers
        res.notes.append(f"params_thop_rules unavailable: {e}")
    for attr, counter in (("macs", count_macs), ("macs_thop_rules", count_macs_thop_rules)):
        try:
            setattr(res, attr, counter(net, (1, in_channels, *size)) * batch_size)
        except Exception as e:  # e.g. thop not installed; keep the other numbers
            res.notes.append(f"{attr} unavailable: {type(e).__name__}: {e}")
    res.flops = None if res.macs is None else 2 * res.macs
    dev = torch.device(device)
    x = torch.randn(batch_size, in_channels, *size, device=dev)
    if memory:
        if dev.type == "cuda":
            net = net.to(dev)
            res.forward_peak_bytes = peak_memory_cuda(net, x, False, num_classes)
            ds_net, _ = build_network(trainer, in_channels, num_classes, size, deep_supervision=trains_with_ds,
                                      plans=plans)
            res.train_step_peak_bytes = peak_memory_cuda(ds_net.to(dev), x, True, num_classes)
            del ds_net
        else:
            spec = {"trainer": trainer, "in_channels": in_channels, "num_classes": num_classes, "size": list(size),
                    "batch_size": batch_size, "plans": plans, "deep_supervision": trains_with_ds,
                    "threads": threads or torch.get_num_threads()}
            res.forward_peak_bytes = peak_memory_cpu({**spec, "mode": "forward"})
            res.train_step_peak_bytes = peak_memory_cpu({**spec, "mode": "train"})
    net = net.to(dev)
    res.latency_ms = measure_latency(net, x, repeats=latency_repeats) if latency_repeats else None
    return res


def format_results(results: Sequence[ProfileResult]) -> List[List[str]]:
    """Table rows: trainer, params (M), trainable (M), params by thop's rules (M), GMACs, GFLOPs,
    GMACs by thop's rules, forward / train-step peak MiB, latency ms."""
    mib = lambda b: "-" if b is None else f"{b / 2 ** 20:.1f}"  # noqa: E731
    rows = []
    for r in results:
        rows.append([r.trainer, f"{r.params_total / 1e6:.3f}", f"{r.params_trainable / 1e6:.3f}",
                     "-" if r.params_thop_rules is None else f"{r.params_thop_rules / 1e6:.3f}",
                     "-" if r.macs is None else f"{r.macs / 1e9:.3f}", "-" if r.flops is None else f"{r.flops / 1e9:.3f}",
                     "-" if r.macs_thop_rules is None else f"{r.macs_thop_rules / 1e9:.3f}",
                     mib(r.forward_peak_bytes), mib(r.train_step_peak_bytes),
                     "-" if r.latency_ms is None else f"{r.latency_ms:.2f}"])
    return rows


TABLE_HEADER = ["trainer", "params (M)", "trainable (M)", "params, thop rules (M)", "GMACs", "GFLOPs (2xMACs)", "GMACs (thop rules)",
                "fwd peak MiB", "train-step peak MiB", "latency ms"]


# -- process memory (Linux /proc; ru_maxrss where /proc/self/status is missing) ----------------------
def rss_bytes() -> int:
    """This process's resident set size now."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) of this process (Linux >= 4.0: clear_refs 5);
    False where that is not allowed, and the peak then includes everything before."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    """This process's peak resident set size (VmHWM; ru_maxrss, KiB on Linux, as the fallback)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


if __name__ == "__main__":  # subprocess entry of peak_memory_cpu
    print(json.dumps({"peak_bytes": _measure_cpu_memory_here(json.loads(sys.argv[1]))}))
