"""Moved to :mod:`bus_nnunet.profiling` (network cost is not evaluation), whose trainer lookup is
:func:`bus_nnunet.registration.trainer_class`; this module stays only while
``benchmarks/gpu_check.py`` imports ``resolve_trainer`` from here."""
from bus_nnunet.registration import trainer_class as resolve_trainer  # noqa: F401
