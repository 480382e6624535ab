"""``bus-nnunet`` command line: one sub-command per module in ``bus_nnunet/commands``.

A command module defines ``register(subparsers)``, which adds its parser and sets
``func=<callable(args) -> int>`` as default.  Modules import heavy packages (torch, nnU-Net)
inside their functions, so ``bus-nnunet --help`` stays fast.
"""
from __future__ import annotations

import argparse
import errno
import importlib
import pkgutil
import sys

from bus_nnunet import __version__
from bus_nnunet.errors import UserError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bus-nnunet",
        description="Breast and thyroid ultrasound segmentation on top of nnU-Net v2: dataset converters, "
                    "published networks as nnU-Net trainers, evaluation and reports.")
    parser.add_argument("--version", action="version", version=f"bus-nnunet {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    from bus_nnunet import commands
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if not info.name.startswith("_"):
            importlib.import_module(f"{commands.__name__}.{info.name}").register(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except UserError as e:  # expected, explained failures: no traceback
        print(f"bus-nnunet {args.command}: error: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # the environment (read-only root, a file where a folder goes, full disk)
        if e.filename is None or e.errno not in ENVIRONMENT_FIXES:
            raise
        print(f"bus-nnunet {args.command}: error: {environment_message(e)}", file=sys.stderr)
        return 1


def environment_message(e: OSError) -> str:
    """One line for an OSError the user can fix: the path, the cause, the free space where the
    disk is full, and what to do."""
    from bus_nnunet.io_utils import NO_SPACE_ERRNOS, free_space_text
    cause = e.strerror or errno.errorcode.get(e.errno, str(e.errno))
    if e.errno in NO_SPACE_ERRNOS:
        cause += f" ({free_space_text(e.filename)} on that file system)"
    return f"cannot write {e.filename}: {cause}; {ENVIRONMENT_FIXES[e.errno]}"


#: errno -> what the user can do about it
ENVIRONMENT_FIXES = {
    errno.EACCES: "choose a location you can write to, or fix its permissions",
    errno.EPERM: "choose a location you can write to, or fix its permissions",
    errno.EROFS: "the file system is read-only: choose another output location",
    errno.ENOTDIR: "a parent of that path is a file, not a folder: choose a folder path",
    errno.EEXIST: "a file is in the way where a folder must be created: choose another path",
    errno.ENOSPC: "the disk is full: free space or write elsewhere (nothing partial was kept)",
    errno.EDQUOT: "the disk quota is exceeded: free space or write elsewhere (nothing partial was kept)",
}


if __name__ == "__main__":
    sys.exit(main())
