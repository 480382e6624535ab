"""Converters from public breast/thyroid ultrasound releases to nnU-Net raw datasets.

One module per dataset finds its cases and defines ``INFO`` (a :class:`.base.DatasetInfo`: the
contract and small helpers live in :mod:`.base`); :mod:`.pipeline` does the rest (reading through
:mod:`bus_nnunet.image_io`, splits and duplicates in :mod:`.splits`).  Every module of this package that defines ``INFO`` is a
``bus-nnunet convert`` dataset: its key, aliases, default id and own options reach the command
line from ``INFO``, so adding a dataset is adding one module (docs/extending.md)."""
import importlib
import pkgutil
from typing import Dict


def converters() -> Dict[str, object]:
    """``key -> DatasetInfo`` of every converter module of this package, by default dataset id."""
    infos = []
    for module in pkgutil.iter_modules(__path__):
        if module.name.startswith("_"):
            continue
        info = getattr(importlib.import_module(f"{__name__}.{module.name}"), "INFO", None)
        if info is not None:
            infos.append(info)
    return {info.key: info for info in sorted(infos, key=lambda i: (i.default_id, i.key))}


def get_converter(name: str):
    """The ``DatasetInfo`` of a converter by key or alias (case-insensitive)."""
    name = name.lower()
    infos = converters()
    for info in infos.values():
        if name == info.key or name in info.aliases:
            return info
    from bus_nnunet.errors import UserError
    raise UserError(f"unknown dataset {name!r}; choose one of {', '.join(infos)}")
