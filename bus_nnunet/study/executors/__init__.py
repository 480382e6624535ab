"""Where a study's jobs run: one protocol, executors registered by ``kind``.

An executor is anything with one method, ``executor(run, jobs) -> {job key: state}``: it runs (or
submits) the jobs of a :class:`bus_nnunet.study.run.StudyRun` that are not done and says, per job,
what became of it (``done``, ``failed``, ``blocked``, ``running`` when another study run holds it,
``submitted`` when a scheduler has it now).  Each module of this package registers its executors
with :func:`register_executor` -- as converters and networks register themselves:

* ``local`` (:mod:`.local`) -- the stages in order on this machine, one training run per GPU;
* ``slurm`` (:mod:`.slurm`) -- the whole study submitted once through submitit, job arrays and
  ``afterok`` dependencies; ``submitit-local`` / ``submitit-debug`` run the same submission on
  submitit's local and debug clusters (tests, a laptop).

A new executor (LSF or PBS through a submitit plugin, a Ray or Dask cluster) is one module here:
the study file's ``[executor] kind`` is checked against this registry, and its options table
``[executor.<table>]`` is validated by the pydantic model it registers.  A module that fails to
import is listed in :data:`UNAVAILABLE` with its error instead of hiding the others.
"""
from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Dict, List, Optional, Protocol, Type

if TYPE_CHECKING:  # pragma: no cover
    from bus_nnunet.study.jobs import Job
    from bus_nnunet.study.run import StudyRun

#: module name -> "ExceptionType: message" for executor modules that failed to import
UNAVAILABLE: Dict[str, str] = {}
_REGISTRY: Dict[str, "Registered"] = {}
_loaded = False


class Executor(Protocol):
    """Runs the jobs of a study run that are not done; returns ``job key -> state`` (``done``,
    ``failed``, ``blocked``, ``running`` -- another study run holds it --, ``queued``/``submitted``
    -- a scheduler has it)."""

    def __call__(self, run: "StudyRun", jobs: List["Job"]) -> Dict[str, str]: ...


@dataclass(frozen=True)
class Registered:
    kind: str
    factory: Callable[[], Executor]
    module: str
    #: the pydantic model of the study file's ``[executor.<table>]`` (None: the executor has no options)
    options: Optional[Type] = None
    table: Optional[str] = None
    #: whether the jobs' commands ask for a GPU (``-device cuda``), from the study
    uses_gpu: Callable[[object], bool] = lambda study: False


def register_executor(kind: str, *, options: Optional[Type] = None, table: Optional[str] = None,
                      uses_gpu: Optional[Callable[[object], bool]] = None):
    """Class (or factory) decorator: ``@register_executor("lsf", options=LsfOptions)`` makes
    ``[executor] kind = "lsf"`` run the study through it, with ``[executor.lsf]`` validated by
    ``LsfOptions`` (``table`` names another executor's table to share it)."""
    def wrap(factory):
        if kind in _REGISTRY and _REGISTRY[kind].module != factory.__module__:
            raise ValueError(f"executor kind {kind!r} is registered twice ({_REGISTRY[kind].module}, "
                             f"{factory.__module__})")
        _REGISTRY[kind] = Registered(kind, factory, factory.__module__, options,
                                     (table or kind) if options is not None else None,
                                     uses_gpu or (lambda study: False))
        return factory
    return wrap


def _load_all() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        full = f"{__name__}.{info.name}"
        try:
            importlib.import_module(full)
        except Exception as e:  # noqa: BLE001 - one broken executor must not hide the others
            UNAVAILABLE[full] = f"{type(e).__name__}: {e}"


def executor_kinds() -> Dict[str, Registered]:
    """``kind -> Registered`` of every executor that imported."""
    _load_all()
    return dict(sorted(_REGISTRY.items()))


def unknown_kind_message(kind: str) -> str:
    """Why ``kind`` is no executor: the close matches, the known kinds and the modules that failed."""
    from bus_nnunet.errors import did_you_mean
    kinds = list(executor_kinds())
    broken = "".join(f"; {m} is unavailable ({e})" for m, e in UNAVAILABLE.items())
    return f"unknown executor {kind!r}: {did_you_mean(kind, kinds)}known: {', '.join(kinds)}{broken}"


def get_executor(kind: str) -> Executor:
    """A new executor of ``kind`` (a :class:`bus_nnunet.errors.UserError` naming the known ones)."""
    entry = executor_kinds().get(kind)
    if entry is None:
        from bus_nnunet.errors import UserError
        raise UserError(unknown_kind_message(kind))
    return entry.factory()
