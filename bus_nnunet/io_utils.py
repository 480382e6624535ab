"""Safe output handling shared by every command: never overwrite what a user has without
``--overwrite``, and never leave a half-written result behind."""
from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable

from bus_nnunet.errors import UserError


#: written into every output folder a bus-nnunet command creates; ``--overwrite`` replaces only
#: folders that carry it, so a mistyped ``-o`` can never delete a folder of the user's own
OUTPUT_MARKER = ".bus-nnunet-output"
#: the --overwrite help of every command writing an output folder
OVERWRITE_HELP = (f"replace an existing output folder that bus-nnunet wrote (it holds {OUTPUT_MARKER}); "
                  f"a folder of your own, a file, or an output overlapping an input is never replaced")


def _contains(outer: Path, inner: Path) -> bool:
    return inner == outer or outer in inner.parents


def check_not_overlapping(path, inputs: Iterable = (), what: str = "output") -> None:
    """Raise a UserError if ``path`` is, contains, or lies inside one of ``inputs``.

    Paths are compared after resolving symbolic links, so ``-o ./scans/../scans`` or a link to the
    input folder is caught too.  Input files count: an output folder that contains an input image
    would delete it on ``--overwrite``.
    """
    out = Path(os.path.realpath(path))
    for given in inputs:
        if given is None:
            continue
        inp = Path(os.path.realpath(given))
        if _contains(out, inp) or _contains(inp, out):
            relation = ("is" if inp == out else "contains" if _contains(out, inp) else "lies inside")
            raise UserError(f"{what} {path} {relation} the input {given}: writing there could replace or "
                            f"delete the input; choose an output location outside every input")


def check_output_free(path, overwrite: bool, what: str = "output", *, inputs: Iterable = (),
                      folder: bool = False) -> Path:
    """Check that ``path`` may be written by a command reading ``inputs``.

    Refused, with a UserError naming the path and the fix:

    * an output that is, contains or lies inside one of ``inputs`` (even with ``overwrite``);
    * an existing output without ``overwrite``;
    * an existing, non-empty folder that bus-nnunet did not write (no ``OUTPUT_MARKER`` file in
      it), even with ``overwrite``: ``--overwrite`` replaces our own results, never a user's folder;
    * with ``folder`` (the output is a folder), an existing file, even with ``overwrite``.
    """
    path = Path(path)
    check_not_overlapping(path, inputs, what)
    if not path.exists():
        return path
    if not overwrite:
        raise UserError(f"{what} {path} already exists; pass --overwrite to replace it "
                        f"(or choose another location)")
    if folder and not path.is_dir():
        raise UserError(f"{what} {path} is a file, not a folder bus-nnunet wrote, so --overwrite will not "
                        f"replace it: move or delete it yourself, or choose another location")
    if path.is_dir() and not (path / OUTPUT_MARKER).is_file() and any(path.iterdir()):
        raise UserError(f"{what} {path} was not written by bus-nnunet (it has no {OUTPUT_MARKER} file), so "
                        f"--overwrite will not replace it: move or delete it yourself, or choose another location")
    return path


def write_output_marker(folder, command: str = "") -> None:
    """Mark ``folder`` as written by bus-nnunet, so a later ``--overwrite`` may replace it."""
    from bus_nnunet import __version__
    Path(folder, OUTPUT_MARKER).write_text(
        f"written by bus-nnunet {__version__}{(' ' + command) if command else ''}; "
        f"--overwrite may replace this folder\n", encoding="utf-8")


#: errno values that mean "no room left to write": a full disk or a used-up quota
NO_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def free_space_text(path) -> str:
    """How much is free on the file system that holds ``path`` (or would hold it: its nearest
    existing parent is asked), e.g. ``"1.5 MiB free of 20.0 GiB"``."""
    existing = Path(os.path.abspath(path))
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        usage = shutil.disk_usage(existing)
    except OSError:
        return "free space unknown"
    return f"{format_size(usage.free)} free of {format_size(usage.total)}"


def format_size(n_bytes: float) -> str:
    """``1536`` -> ``"1.5 KiB"``."""
    units = ("B", "KiB", "MiB", "GiB", "TiB")
    k = 0
    while n_bytes >= 1024 and k < len(units) - 1:
        n_bytes, k = n_bytes / 1024, k + 1
    return f"{n_bytes:.0f} B" if k == 0 else f"{n_bytes:.1f} {units[k]}"


def current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def give_umask_mode(path, directory: bool) -> None:
    """tempfile's mkdtemp / mkstemp create 0700 / 0600 entries; once renamed into place they must
    have the mode any file the user creates gets (shared lab storage, SLURM service users)."""
    os.chmod(path, (0o777 if directory else 0o666) & ~current_umask())


def _process_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def remove_stale_partials(path: Path, log=print) -> None:
    """Remove the hidden ``.<name>.partial-<pid>-*`` folders a killed run left beside ``path``
    (``<pid>`` no longer running; older nameless ones too), and say so.  A partial of a run that
    is still going, and the partials of other outputs, are left alone."""
    for partial in sorted(Path(path).parent.glob(f".{glob.escape(Path(path).name)}.partial-*")):
        pid = partial.name.rsplit(".partial-", 1)[1].split("-", 1)[0]
        if pid.isdigit() and _process_running(int(pid)):
            continue
        size = (sum(f.stat().st_size for f in partial.rglob("*") if f.is_file()) if partial.is_dir()
                else partial.stat().st_size)
        shutil.rmtree(partial, ignore_errors=True) if partial.is_dir() else partial.unlink(missing_ok=True)
        log(f"removed {partial} ({size / 2 ** 20:.1f} MiB), left by an interrupted run "
            f"{'(process ' + pid + ', no longer running)' if pid.isdigit() else ''}".rstrip())


@contextlib.contextmanager
def atomic_output_dir(path, overwrite: bool = False, what: str = "output folder", *, inputs: Iterable = ()):
    """Yield a temporary sibling folder; on success it replaces ``path`` in one rename.

    If the body raises, the temporary folder is removed and ``path`` is untouched.  ``path`` is
    checked by :func:`check_output_free` (never one of ``inputs``; an existing one only with
    ``overwrite`` and only if bus-nnunet wrote it) and replaced only after the new content is
    complete.  The new folder carries ``OUTPUT_MARKER``.  A full disk while writing is re-raised
    as an OSError whose filename is ``path`` (the partial folder it hit is gone by then), which
    the CLI turns into one line with the free space.
    """
    path = Path(path)
    check_output_free(path, overwrite, what, inputs=inputs, folder=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.partial-{os.getpid()}-", dir=path.parent))
    give_umask_mode(tmp, directory=True)
    try:
        write_output_marker(tmp)
        yield tmp
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError) and e.errno in NO_SPACE_ERRNOS:
            # writers (PIL, numpy, json) often raise it without a filename
            raise OSError(e.errno, e.strerror or os.strerror(e.errno), str(path)) from e
        raise
    old = None
    if path.exists():
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        os.replace(path, old)
    os.replace(tmp, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink()


def atomic_write(path, write) -> None:
    """``write(tmp)`` into a hidden temporary sibling (``.<name>.*``), then one rename over
    ``path``: a kill leaves the old file or none, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        give_umask_mode(tmp, directory=False)
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path, text: str, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``path`` via a temporary file and an atomic rename."""
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding=encoding))


def atomic_write_json(path, obj, indent: int = 2) -> None:
    atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=False) + "\n")


def sha256_of(path) -> str:
    """The file's SHA-256 hex digest, read in 1 MiB blocks (weights checks, conversion manifests)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
