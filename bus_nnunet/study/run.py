"""A study run: the study file, where its outputs go, and its jobs as the disk has them now."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Tuple

from bus_nnunet.study import jobs as J
from bus_nnunet.study.config import Study, load_study


class StudyRun:
    """One study on one executor: :attr:`study` (the validated file), :attr:`layout` (nnU-Net's
    folders and the study's output), :attr:`jobs` (every job, each built with its real command
    from the state on disk) and what the disk and SLURM say of each job (:meth:`states`).

    ``executor`` (a registered kind, :mod:`bus_nnunet.study.executors`) runs the study on another
    executor than the file's ``[executor] kind``, e.g. ``submitit-local`` to try a SLURM study here.

    Examples
    --------
    >>> run = StudyRun.load("study.toml")                    # doctest: +SKIP
    >>> run.executor()(run, run.jobs)                        # doctest: +SKIP
    >>> run.states()["report-501-nnUNetPlans"]               # doctest: +SKIP
    ('stale', 'nnUNetTrainerUS fold 1 trained after this report')
    """

    def __init__(self, study: Study, executor: Optional[str] = None):
        from bus_nnunet.study.executors import executor_kinds, unknown_kind_message
        from bus_nnunet.errors import UserError
        self.study = study
        self.kind = executor or study.executor.kind
        entry = executor_kinds().get(self.kind)
        if entry is None:
            raise UserError(unknown_kind_message(self.kind))
        self._entry = entry
        self.layout = J.Layout(study)
        self._device: Optional[str] = None
        self.jobs: List[J.Job] = J.build_jobs(self)

    @classmethod
    def load(cls, study_file, executor: Optional[str] = None) -> "StudyRun":
        return cls(load_study(study_file), executor)

    @property
    def file(self) -> Path:
        return self.study.file

    @property
    def device(self) -> str:
        """``cuda`` when the executor gives the jobs GPUs, else ``cpu`` (nnU-Net's ``-device``)."""
        if self._device is None:
            self._device = "cuda" if self._entry.uses_gpu(self.study) else "cpu"
        return self._device

    def executor(self):
        """A new executor of this run's kind."""
        from bus_nnunet.study.executors import get_executor
        return get_executor(self.kind)

    def job(self, key: str) -> J.Job:
        """The job ``key`` built again from the disk as it is now (its command and its record of
        inputs may have changed since :attr:`jobs` was built: another run trained a fold)."""
        return next(j for j in J.build_jobs(self) if j.key == key)

    def by_key(self) -> Dict[str, J.Job]:
        return {j.key: j for j in self.jobs}

    def is_done(self, job: J.Job) -> bool:
        return J.outputs_state(self, job)[0]

    def state(self, job: J.Job, slurm=None) -> Tuple[str, str]:
        """(state, why) of one job (:func:`.jobs.job_state`); ``slurm={}`` asks SLURM nothing."""
        return J.job_state(self, job, slurm)

    def states(self, jobs: Optional[List[J.Job]] = None) -> Dict[str, Tuple[str, str]]:
        """``key -> (state, why)`` of the jobs (all by default), with one SLURM call for all."""
        return J.job_states(self, self.jobs if jobs is None else jobs)

    def budget_mismatches(self) -> List[str]:
        return J.budget_mismatches(self)
