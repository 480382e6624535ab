"""``bus-nnunet study``: cross-validation studies (datasets x plans x trainers x folds) run through
nnU-Net's own commands, on the local machine (one job per GPU, or one at a time on CPU) or on a
SLURM cluster through submitit, resumable from nnU-Net's outputs on disk.

* :mod:`.config` -- the study file (TOML), validated with an error naming the bad key;
* :mod:`.jobs` -- the stages as jobs (convert, plan, train, validate, ensemble, report) and
  their state read from nnU-Net's outputs;
* :mod:`.executors` -- local and SLURM (submitit) execution of the jobs;
* :mod:`.report` -- the summary people look at (``summary.md``, self-contained ``summary.html``).
"""
