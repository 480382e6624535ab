"""Safe output handling shared by every command: never overwrite what a user has without
``--overwrite``, and never leave a half-written result behind."""
from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import tempfile
from pathlib import Path

from bus_nnunet.errors import UserError


def check_output_free(path, overwrite: bool, what: str = "output") -> Path:
    """Raise a UserError if ``path`` exists and ``overwrite`` is False."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise UserError(f"{what} {path} already exists; pass --overwrite to replace it "
                        f"(or choose another location)")
    return path


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
def atomic_output_dir(path, overwrite: bool = False, what: str = "output folder"):
    """Yield a temporary sibling folder; on success it replaces ``path`` in one rename.

    If the body raises, the temporary folder is removed and ``path`` is untouched.  An existing
    ``path`` is refused unless ``overwrite``; with ``overwrite`` it is replaced only after the new
    content is complete.
    """
    path = Path(path)
    check_output_free(path, overwrite, what)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.partial-{os.getpid()}-", dir=path.parent))
    give_umask_mode(tmp, directory=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if path.exists():
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        os.replace(path, old)
    os.replace(tmp, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink()


def atomic_write_text(path, text: str, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``path`` via a temporary file and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        give_umask_mode(tmp, directory=False)
        with os.fdopen(fd, "w", encoding=encoding) as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_json(path, obj, indent: int = 2) -> None:
    atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=False) + "\n")
