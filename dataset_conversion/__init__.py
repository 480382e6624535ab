"""Converters from public breast/thyroid ultrasound releases to nnU-Net raw datasets.

One module per dataset finds its cases; :mod:`._common` does the rest.  ``CONVERTERS`` maps the
``bus-nnunet convert`` dataset name to the module that defines ``INFO``."""
import importlib

CONVERTERS = {
    "busi": "busi", "breast": "breast", "udiat": "udiat", "stu": "stu", "busis": "busis", "busbra": "busbra",
    "tn3k": "tn3k", "ddti": "ddti", "tg3k": "tg3k", "folder": "folder",
}
ALIASES = {"bus-bra": "busbra", "bus_bra": "busbra", "datasetb": "udiat", "stu-hospital": "stu"}


def get_converter(name: str):
    """The ``DatasetInfo`` of a converter by name (case-insensitive; aliases allowed)."""
    key = ALIASES.get(name.lower(), name.lower())
    if key not in CONVERTERS:
        from bus_nnunet.errors import UserError
        raise UserError(f"unknown dataset {name!r}; choose one of {', '.join(CONVERTERS)}")
    return importlib.import_module(f"{__name__}.{CONVERTERS[key]}").INFO
