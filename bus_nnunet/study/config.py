"""The study file: what to run, validated before anything runs.

A study file is TOML (see ``examples/study_breast.toml``)::

    output = "studies/breast"                  # status logs and the report (relative to this file)
    trainers = ["nnUNetTrainer", "nnUNetTrainerUS", "SSNetTrainer"]
    plans = ["nnUNetPlans", "nnUNetResEncUNetMPlans"]
    folds = [0, 1, 2, 3, 4]

    [[datasets]]
    id = 501
    converter = "busi"                         # or leave out converter/source: an existing dataset
    source = "/data/Dataset_BUSI_with_GT"

    [[datasets]]
    id = 502
    converter = "stu"
    source = "/data/STU-Hospital"
    train = false                              # only tested on: models of 501 predict its images

    [external]                                 # training dataset id -> test dataset ids, or "all"
    501 = [502]

    [executor]
    kind = "slurm"                             # a registered executor (bus_nnunet.study.executors)
    [executor.slurm]                           # its options, validated by the model it registers
    partition = "gpu"

Every key is checked (unknown keys too); an error names the key, e.g.
``datasets[0].converter: unknown converter 'bussi': did you mean busi? known: ...``.
"""
from __future__ import annotations

import functools
import os
import tomllib
from pathlib import Path
from typing import Dict, List, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from bus_nnunet.errors import UserError, did_you_mean

#: nnU-Net's plans presets -> the planner that writes them (``nnUNetv2_plan_and_preprocess -pl``);
#: nnU-Net's documentation recommends the residual-encoder presets over the old default
PLANNERS = {
    "nnUNetPlans": "ExperimentPlanner",
    "nnUNetResEncUNetMPlans": "nnUNetPlannerResEncM",
    "nnUNetResEncUNetLPlans": "nnUNetPlannerResEncL",
    "nnUNetResEncUNetXLPlans": "nnUNetPlannerResEncXL",
}
NNUNET_PATHS = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")


def batch_plans_name(plans: str, batch_size: Optional[int]) -> str:
    """The plans copy a smoke run trains on: ``<plans>_bs<N>`` (same preprocessed data, batch size N
    in the 2D configuration), or ``plans`` itself without a batch size."""
    return f"{plans}_bs{batch_size}" if batch_size else plans


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DatasetSpec(_Strict):
    id: int = Field(ge=1, le=999)
    converter: Optional[str] = None
    source: Optional[Path] = None
    convert_args: List[str] = []
    #: false: the dataset is only tested on (``[external]``): converted, never planned or trained
    train: bool = True

    @field_validator("converter")
    @classmethod
    def _known_converter(cls, name):
        # the converter registry's own lookup: keys and aliases, as `bus-nnunet convert` accepts them
        if name is not None:
            from bus_nnunet.dataset_conversion import converters, get_converter
            try:
                get_converter(name)
            except UserError:
                known = list(converters())
                raise ValueError(f"unknown converter {name!r}: {did_you_mean(name, known)}known: "
                                 f"{', '.join(known)}") from None
        return name

    @model_validator(mode="after")
    def _source_with_converter(self):
        if (self.converter is None) != (self.source is None):
            raise ValueError("give converter and source together (to convert), or neither (an existing dataset id)")
        return self


class Schedule(_Strict):
    """Shorter runs for smoke studies; every trainer, nnU-Net's own included, gets the same."""
    epochs: Optional[int] = Field(None, ge=1)
    iterations_per_epoch: Optional[int] = Field(None, ge=1)
    val_iterations: Optional[int] = Field(None, ge=1)
    #: trains on a copy of each plans with this 2D batch size (``<plans>_bs<N>``, same data)
    batch_size: Optional[int] = Field(None, ge=1)

    def overrides(self) -> Dict[str, int]:
        """nnU-Net trainer attribute -> value, only the ones the study sets."""
        values = {"num_epochs": self.epochs, "num_iterations_per_epoch": self.iterations_per_epoch,
                  "num_val_iterations_per_epoch": self.val_iterations}
        return {k: v for k, v in values.items() if v is not None}


class ExecutorSpec(_Strict):
    """``[executor]``: the kind (a registered executor) and what every executor shares; each
    executor's own table (``[executor.slurm]``) is added from the registry by :func:`load_study`."""
    kind: str = "local"
    #: local: "auto" = every visible GPU (none: CPU, one job at a time), or a number of GPUs
    gpus: Union[Literal["auto"], int] = "auto"
    #: nnU-Net's preprocessing / export processes per job (-np / nnUNet_def_n_proc)
    processes: int = Field(4, ge=1)
    #: nnU-Net's data-augmentation workers per training run (nnUNet_n_proc_DA; 0 = in the training
    #: process, for tiny smoke studies); default: nnU-Net's choice
    augmentation_workers: Optional[int] = Field(None, ge=0)

    @field_validator("kind")
    @classmethod
    def _registered_kind(cls, kind):
        from bus_nnunet.study.executors import executor_kinds, unknown_kind_message
        if kind not in executor_kinds():
            raise ValueError(unknown_kind_message(kind))
        return kind


class Study(_Strict):
    trainers: List[str] = Field(min_length=1)
    datasets: List[DatasetSpec] = Field(min_length=1)
    plans: List[str] = ["nnUNetPlans"]
    folds: List[Union[int, Literal["all"]]] = [0, 1, 2, 3, 4]
    configuration: Literal["2d"] = "2d"
    #: the paired tests and the "x baseline" column compare against this trainer (default: the first)
    baseline: Optional[str] = None
    output: Path = Path("study")
    name: Optional[str] = None
    #: flags passed to every nnUNetv2_train, e.g. ["--npz"] (needed for ensembling)
    nnunet_train_flags: List[str] = ["--npz"]
    schedule: Schedule = Schedule()
    executor: ExecutorSpec = Field(default_factory=ExecutorSpec)
    #: nnUNet_raw / nnUNet_preprocessed / nnUNet_results; default: the environment's
    paths: Dict[str, Path] = {}
    #: external validation: ``"all"`` (every trained dataset tested on every other dataset of the
    #: study), or a table training dataset id -> test dataset ids (or ``"all"``): ``[external] 501 = [502]``
    external: Union[Literal["all"], Dict[int, Union[Literal["all"], List[int]]], None] = None
    #: the external tests' ensemble: the k trainers with the best cross-validation Dice
    ensemble_best_k: int = Field(3, ge=1)
    #: HD95 convention of cv-report (``--hd95``) and of the external scores
    hd95: Literal["pooled", "max"] = "pooled"
    #: the study file and its folder (relative paths are resolved against it); set by :func:`load_study`
    root: Path = Path(".")
    file: Optional[Path] = None

    @field_validator("plans")
    @classmethod
    def _known_plans(cls, plans):
        for p in plans:
            if p not in PLANNERS:
                raise ValueError(f"unknown plans {p!r}: {did_you_mean(p, list(PLANNERS))}known: {', '.join(PLANNERS)}")
        return plans

    @field_validator("external", mode="before")
    @classmethod
    def _external_form(cls, value):
        # one message for the two forms, instead of pydantic's one per branch of the Union
        if value is not None and not isinstance(value, dict) and value != "all":
            raise ValueError(f'give "all" (every trained dataset tested on every other one) or a table '
                             f'[external] of training dataset id = [test dataset ids] or "all"; got {value!r}')
        return value

    @field_validator("paths")
    @classmethod
    def _known_paths(cls, paths):
        bad = [k for k in paths if k not in NNUNET_PATHS]
        if bad:
            raise ValueError(f"unknown path {bad[0]!r}; the keys are {', '.join(NNUNET_PATHS)}")
        return paths

    @field_validator("folds")
    @classmethod
    def _unique_folds(cls, folds):
        if len(set(map(str, folds))) != len(folds):
            raise ValueError(f"folds repeat: {folds}")
        return folds

    @model_validator(mode="after")
    def _consistent(self):
        ids = [d.id for d in self.datasets]
        if len(set(ids)) != len(ids):
            raise ValueError(f"datasets: id repeated ({ids})")
        if len(set(self.trainers)) != len(self.trainers):
            raise ValueError(f"trainers: repeated ({self.trainers})")
        if self.baseline is not None and self.baseline not in self.trainers:
            raise ValueError(f"baseline {self.baseline!r} is not one of the study's trainers")
        self._check_external(ids)
        return self

    def _check_external(self, ids: List[int]) -> None:
        trained = [d.id for d in self.datasets if d.train]
        if not trained:
            raise ValueError("datasets: every dataset has train = false; a study trains on at least one")
        tested = set()
        if self.external == "all":
            tested = set(ids)
        for key, tests in (self.external.items() if isinstance(self.external, dict) else ()):
            if key not in ids:
                raise ValueError(f"external.{key}: {key} is not a dataset id of the study ({ids})")
            if key not in trained:
                raise ValueError(f"external.{key}: dataset {key} has train = false: it has no models to test")
            unknown = [t for t in (tests if tests != "all" else []) if t not in ids]
            if unknown:
                raise ValueError(f"external.{key}: {unknown[0]} is not a dataset id of the study ({ids})")
            if tests != "all" and key in tests:
                raise ValueError(f"external.{key}: a dataset is not its own external test (its cross-validation "
                                 f"is the matrix's diagonal)")
            tested |= set(ids if tests == "all" else tests) - {key}
        for i, d in enumerate(self.datasets):
            if not d.train and d.id not in tested:
                raise ValueError(f"datasets[{i}]: train = false, but no [external] entry tests on dataset {d.id}")

    # -- derived ---------------------------------------------------------------------------------
    @property
    def baseline_trainer(self) -> str:
        return self.baseline or self.trainers[0]

    def trained_plans(self, plans: str) -> str:
        """The plans identifier training runs use: the preset, or its ``[schedule] batch_size`` copy."""
        return batch_plans_name(plans, self.schedule.batch_size)

    @property
    def output_dir(self) -> Path:
        return (self.root / self.output).resolve()

    def nnunet_paths(self) -> Dict[str, str]:
        """The three nnU-Net folders: the study file's ``[paths]``, else the environment."""
        out = {}
        for key in NNUNET_PATHS:
            value = self.paths.get(key) or os.environ.get(key)
            if not value:
                raise UserError(f"{key} is not set: export it (as for nnU-Net) or set it under [paths] in the study file")
            out[key] = str((self.root / value).resolve())
        return out


def _key_path(loc) -> str:
    """pydantic's ``("datasets", 0, "converter")`` -> ``datasets[0].converter``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


@functools.lru_cache(maxsize=None)
def _study_model():
    """:class:`Study` whose ``[executor]`` has a table per registered executor with options
    (``[executor.slurm]``): a new executor's options need no edit here."""
    from pydantic import create_model
    from bus_nnunet.study.executors import executor_kinds
    tables = {}
    for entry in executor_kinds().values():
        if entry.options is not None:
            tables.setdefault(entry.table, (entry.options, entry.options()))
    executor = create_model("ExecutorSpec", __base__=ExecutorSpec, **tables)
    return create_model("Study", __base__=Study, executor=(executor, executor()))


def load_study(path) -> Study:
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"study file {path} does not exist") from None
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{path} is not valid TOML: {e}") from None
    for internal in ("root", "file"):
        if internal in data:
            raise UserError(f"{path}: {internal!r} is not a study key (relative paths are resolved against the "
                            f"file's folder)")
    try:
        return _study_model()(**data, root=path.resolve().parent, file=path.resolve())
    except ValidationError as e:
        problems = []
        for err in e.errors():
            key = _key_path(err["loc"]) or "(top level)"
            message = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                message = "unknown key (misspelled?)"
            problems.append(f"{key}: {message}")
        raise UserError(f"{path}: " + "; ".join(problems)) from None
