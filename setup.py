"""bus-nnunet: breast and thyroid ultrasound segmentation on top of a stock nnU-Net v2.

The repository keeps the folder layout of the project's design (``network_architectures/``,
``trainers/``, ``dataset_conversion/`` beside ``bus_nnunet/``); they are installed as
sub-packages of ``bus_nnunet`` so that generic names such as ``trainers`` never land at the
top level of site-packages.

Besides the packages, the wheel carries two files at the site-packages root: a ``.pth`` line
and the tiny module it imports (``_bus_nnunet_hook``).  At interpreter start-up the hook adds
bus-nnunet's trainer folder to ``nnUNet_extTrainer`` (keeping whatever the user set), so the
unmodified ``nnUNetv2_*`` commands find our trainers with no manual step.  Both regular and
editable installs get them (see ``_EditableWithHook``).
"""
import os
import re

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))
HOOK_SOURCE = os.path.join("bus_nnunet", "_autoregister_hook.py")
# name in site-packages -> text; the .pth sorts after setuptools' "__editable__" finder .pth,
# so the package is importable by the time the hook asks for it.
HOOK_FILES = {
    "_bus_nnunet_hook.py": None,  # copied from HOOK_SOURCE
    "bus_nnunet_autoregister.pth": "import _bus_nnunet_hook\n",
}


def _hook_file_text(name):
    if HOOK_FILES[name] is not None:
        return HOOK_FILES[name]
    with open(os.path.join(HERE, HOOK_SOURCE), encoding="utf-8") as f:
        return f.read()


class BuildPyWithHook(build_py):
    """build_py that also places the start-up hook at the root of the wheel."""

    def run(self):
        super().run()
        for name in HOOK_FILES:
            with open(os.path.join(self.build_lib, name), "w", encoding="utf-8") as f:
                f.write(_hook_file_text(name))

    def get_outputs(self, include_bytecode=1):
        return super().get_outputs(include_bytecode) + [os.path.join(self.build_lib, n) for n in HOOK_FILES]


cmdclass = {"build_py": BuildPyWithHook}

try:  # setuptools >= 64 (PEP 660 editable installs)
    from setuptools.command.editable_wheel import editable_wheel

    class _StrategyWithHook:
        """Wraps setuptools' editable strategy and adds the hook files to the editable wheel."""

        def __init__(self, strategy):
            self._strategy = strategy

        def __call__(self, wheel, files, mapping):
            self._strategy(wheel, files, mapping)
            for name in HOOK_FILES:
                wheel.writestr(name, _hook_file_text(name).encode("utf-8"))

        def __enter__(self):
            self._strategy.__enter__()
            return self

        def __exit__(self, *exc):
            return self._strategy.__exit__(*exc)

    class _EditableWithHook(editable_wheel):
        def _select_strategy(self, *args, **kwargs):
            return _StrategyWithHook(super()._select_strategy(*args, **kwargs))

    cmdclass["editable_wheel"] = _EditableWithHook
except ImportError:  # pragma: no cover - very old setuptools
    pass


def _version():
    with open(os.path.join(HERE, "bus_nnunet", "__init__.py"), encoding="utf-8") as f:
        return re.search(r'__version__ = "([^"]+)"', f.read()).group(1)


def _packages():
    """bus_nnunet.* packages, with the three design folders mapped in as sub-packages."""
    mapped = {"network_architectures", "trainers", "dataset_conversion"}
    packages, package_dir = [], {"bus_nnunet": "bus_nnunet"}
    for top in ["bus_nnunet", *sorted(mapped)]:
        for root, dirs, files in os.walk(os.path.join(HERE, top)):
            dirs[:] = [d for d in dirs if not d.startswith((".", "__"))]
            if "__init__.py" not in files:
                continue
            rel = os.path.relpath(root, HERE).replace(os.sep, ".")
            name = rel if top == "bus_nnunet" else "bus_nnunet." + rel
            packages.append(name)
    for top in mapped:
        package_dir["bus_nnunet." + top] = top
    return packages, package_dir


PACKAGES, PACKAGE_DIR = _packages()

with open(os.path.join(HERE, "README.md"), encoding="utf-8") as f:
    LONG_DESCRIPTION = f.read()

setup(
    name="bus-nnunet",
    version=_version(),
    description="nnU-Net v2 extension for breast and thyroid ultrasound segmentation research",
    long_description=LONG_DESCRIPTION,
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=PACKAGES,
    package_dir=PACKAGE_DIR,
    include_package_data=False,
    cmdclass=cmdclass,
    install_requires=[
        # torch/torchvision are deliberately not pinned here: install the matched pair first
        # (see README); an unpinned resolve would pull an arbitrary CUDA build.
        "torch>=2.1.2",
        "torchvision",
        "nnunetv2>=2.8.1,<2.9",
        "batchgenerators>=0.25",
        "batchgeneratorsv2>=0.3.2",
        "dynamic-network-architectures>=0.4.4,<0.5",
        "SimpleITK",
        "timm>=1.0",
        "huggingface_hub",  # `bus-nnunet weights fetch` (also a timm dependency)
        "safetensors",
        "numpy",
        "scipy",
        "scikit-learn",
        "pandas",
        "pillow",
        "matplotlib",
        "tqdm",
        "medpy>=0.5",
        "thop",
        "grad-cam>=1.5",
        "openpyxl",
        "ImageHash",
        "pydantic>=2",  # the study file's validation
        "submitit>=1.5",  # `bus-nnunet study` on SLURM
    ],
    extras_require={
        "mamba": ["mamba-ssm", "causal-conv1d"],
        "test": ["pytest>=7", "pytest-timeout"],
    },
    entry_points={"console_scripts": ["bus-nnunet=bus_nnunet.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Medical Science Apps.",
        "Topic :: Scientific/Engineering :: Image Recognition",
    ],
)
