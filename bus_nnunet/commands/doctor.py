"""``bus-nnunet doctor``: is this installation able to train and predict with our trainers?

Reports versions (nnunetv2, torch, torchvision, CUDA, mamba-ssm), checks that nnU-Net's own
trainer lookup finds every bus-nnunet trainer, and says whether torch.compile and AMP will be
used.  Exits 1 with the fix when something is wrong.
"""
from __future__ import annotations

import importlib.metadata as md
import importlib.util
import os

NNUNET_RANGE = ((2, 8, 1), (2, 9, 0))


def register(subparsers):
    p = subparsers.add_parser("doctor", help="check versions, trainer registration, CUDA/AMP/compile")
    p.add_argument("--quick", action="store_true", help="look up one trainer only (faster)")
    p.set_defaults(func=run)


def _version(dist):
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def _parse(v):
    parts = []
    for p in v.split("+")[0].split(".")[:3]:
        digits = "".join(ch for ch in p if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts + [0] * (3 - len(parts)))


def _check_weights(ok, info, bad, trainers):
    """The cache state of every weights name, as `bus-nnunet weights list` and the trainers see it."""
    from bus_nnunet import weights
    from bus_nnunet.errors import UserError
    try:
        mode = weights.pretrained_mode()
    except UserError as e:
        return bad(str(e), f"unset {weights.PRETRAINED_ENV} or set it to auto / none / require")
    info(f"cache {weights.weights_dir()} (${weights.WEIGHTS_DIR_ENV}); {weights.PRETRAINED_ENV}={mode}")
    users, overrides = {}, {}
    for name, cls in sorted(trainers.items()):
        for part, env in cls.pretrained_sources():
            users.setdefault(part.weights, []).append(name)
            overrides.setdefault(env, part.weights)
    for name in weights.catalogue():
        entry, names = weights.cache_entry(name), users.get(name, [])
        who = ", ".join(names[:3]) + (f" (+{len(names) - 3} more)" if len(names) > 3 else "")
        if entry.ok:
            ok(f"{name} cached: {entry.path} (sha256 {entry.record['sha256']})")
        elif entry.problem:
            bad(f"{name}: {entry.problem}", entry.repair())
        else:
            info(f"{name} not cached: {who or 'no trainer'} train from scratch after a warning; "
                 f"fix: bus-nnunet weights fetch {name}")
    for env, name in sorted(overrides.items()):
        r = weights.resolve(name, env)
        if r.state == "file":
            (bad(r.problem, f"unset {env} or point it at a checkpoint") if r.problem
             else ok(f"${env}={r.path} overrides the cached {name}"))


def _check_networks(ok, bad):
    """Every network module imports (one that does not is named with its error, the others still
    register: ``network_architectures._registry.UNAVAILABLE``)."""
    from bus_nnunet.network_architectures import _registry
    names = _registry.list_models()
    for module, error in sorted(_registry.UNAVAILABLE.items()):
        bad(f"network module {module} failed to import: {error}", "see the error; reinstall bus-nnunet")
    ok(f"{len(names)} networks registered: {', '.join(names)}")


def run(args) -> int:
    problems = []
    ok = lambda msg: print(f"  ok    {msg}")  # noqa: E731
    info = lambda msg: print(f"  info  {msg}")  # noqa: E731

    def bad(msg, fix):
        print(f"  FAIL  {msg}\n        fix: {fix}")
        problems.append(msg)

    print("versions")
    nnunet_v = _version("nnunetv2")
    if nnunet_v is None:
        bad("nnunetv2 is not installed", 'pip install "nnunetv2>=2.8.1,<2.9"')
    elif not (NNUNET_RANGE[0] <= _parse(nnunet_v) < NNUNET_RANGE[1]):
        bad(f"nnunetv2 {nnunet_v} is outside the tested range >=2.8.1,<2.9", 'pip install "nnunetv2>=2.8.1,<2.9"')
    else:
        ok(f"nnunetv2 {nnunet_v}")
    import torch
    ok(f"torch {torch.__version__}")
    try:
        import torchvision  # noqa: F401
        from torchvision.ops import deform_conv2d  # noqa: F401  (the import that breaks on a mismatched pair)
        ok(f"torchvision {torchvision.__version__}")
    except Exception as e:
        bad(f"torchvision does not import with this torch ({type(e).__name__}: {e})",
            "install the matched pair: pip install torch==2.14.1 torchvision==0.29.1")
    cuda = torch.cuda.is_available()
    if cuda:
        ok(f"CUDA {torch.version.cuda}, {torch.cuda.device_count()} GPU(s): {torch.cuda.get_device_name(0)}")
    else:
        info("CUDA not available: training runs on CPU (-device cpu; smoke runs only, real training needs a GPU)")
    mamba = importlib.util.find_spec("mamba_ssm") is not None
    info("mamba-ssm " + (f"{_version('mamba-ssm')} (CUDA selective-scan kernels)" if mamba else
                         "not installed: SS-Net uses its pure-PyTorch scan (pip install 'bus-nnunet[mamba]' on CUDA)"))
    info(f"timm {_version('timm')}, dynamic-network-architectures {_version('dynamic-network-architectures')}")

    print("registration")
    from bus_nnunet import registration
    folder = registration.trainer_entry_folder()
    if registration.entry_folder_registered():
        ok(f"nnUNet_extTrainer contains {folder}")
    else:
        bad("nnUNet_extTrainer does not contain bus-nnunet's trainer folder (start-up hook not active)",
            f'reinstall (pip install -e . / pip install bus-nnunet) or export nnUNet_extTrainer="{folder}"')
    if not registration.hook_installed():
        info("start-up hook _bus_nnunet_hook not importable; registration relies on your export")
    _check_networks(ok, bad)
    from bus_nnunet.trainers import TRAINERS, UNAVAILABLE
    for module, error in UNAVAILABLE.items():
        bad(f"trainer module {module} failed to import: {error}", "see the error; reinstall bus-nnunet")
    names = sorted(TRAINERS)[:1] if args.quick else sorted(TRAINERS)
    registration.ensure_registered()  # check the classes themselves even if the hook is off
    for name in names:
        found = registration.lookup_trainer(name)
        if found["error"]:
            bad(f"nnU-Net cannot find {name}: {found['error']}",
                f'export nnUNet_extTrainer="{folder}" and rerun doctor')
        else:
            ok(f"nnU-Net finds {name}")

    print("pretrained weights")
    _check_weights(ok, info, bad, TRAINERS)

    print("acceleration")
    compile_env = os.environ.get("nnUNet_compile")
    if not cuda:
        info("torch.compile: off (nnU-Net never compiles on CPU); AMP: off (CUDA only)")
    else:
        default_on = compile_env is None or compile_env.lower() in ("true", "1", "t")
        no_compile = sorted(n for n, c in TRAINERS.items() if not getattr(c, "allow_compile", True))
        info(f"torch.compile: {'on' if default_on else 'off'} (nnUNet_compile={compile_env!r})"
             + (f"; never for {', '.join(no_compile)}" if no_compile and default_on else ""))
        info("AMP (autocast float16 + GradScaler): on for training and inference on CUDA")

    print()
    if problems:
        print(f"{len(problems)} problem(s) found")
        return 1
    print("all good")
    return 0
