"""Pretrained encoder weights by timm name: the catalogue, the shared cache, and which file a trainer uses.

The catalogue is what the registered networks declare (``register_model(pretrained=...)``): each
entry is a timm ``name.tag`` (``resnet18.tv_in1k``), downloaded from the Hugging Face Hub repository
timm's ``pretrained_cfg`` names (``timm/resnet18.tv_in1k``).  The cache is one folder,
``$BUS_NNUNET_WEIGHTS_DIR`` (default ``~/.cache/bus-nnunet/weights``), holding ``<name>.<ext>`` and a
record ``<name>.json`` (file, sha256, size, source); the record is written last, so a file without
a record is not in the cache.  Copying the folder to another machine carries the weights.

Which file a trainer loads (:func:`resolve`), first match wins:

1. ``BUS_NNUNET_PRETRAINED=none``: none, on purpose (from scratch);
2. the trainer's own variable (e.g. ``BUS_NNUNET_RESNET18=/path/file.pth``): that file;
3. the cache, if the file's sha256 matches its record;
4. otherwise none: the trainer warns and trains from scratch (``BUS_NNUNET_PRETRAINED=require``
   makes this an error).
"""
from __future__ import annotations

import contextlib
import datetime
import functools
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from bus_nnunet.errors import UserError
from bus_nnunet.io_utils import give_umask_mode, remove_stale_partials, sha256_of

WEIGHTS_DIR_ENV = "BUS_NNUNET_WEIGHTS_DIR"
PRETRAINED_ENV = "BUS_NNUNET_PRETRAINED"
PRETRAINED_MODES = ("auto", "none", "require")
DEFAULT_WEIGHTS_DIR = Path("~/.cache/bus-nnunet/weights")
#: what `weights fetch` downloads from each timm repository on the Hub
HUB_FILENAME = "model.safetensors"
CHECKPOINT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")
#: a record's source for weights `weights import` copied: ``import:<absolute path>``
IMPORT_SOURCE = "import:"


# -- catalogue -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Consumer:
    network: str
    part: object  # network_architectures._pretrained.PretrainedPart


def catalogue() -> Dict[str, List[Consumer]]:
    """weights name -> the registered networks (and parts) initialised from it."""
    from bus_nnunet.network_architectures import list_models, model_info
    out: Dict[str, List[Consumer]] = {}
    for network in list_models():
        for part in model_info(network).pretrained:
            out.setdefault(part.weights, []).append(Consumer(network, part))
    return dict(sorted(out.items()))


def check_name(name: str) -> str:
    names = catalogue()
    if name not in names:
        raise UserError(f"unknown weights {name!r}; known: {', '.join(names)} (`bus-nnunet weights list`)")
    return name


def hub_info(name: str) -> Dict[str, Optional[str]]:
    """timm's pretrained_cfg for ``name``: Hub repository, licence, origin."""
    from timm.models import get_pretrained_cfg
    cfg = get_pretrained_cfg(name)
    if cfg is None or not cfg.hf_hub_id:
        raise UserError(f"timm {_timm_version()} has no Hub weights {name!r}; use `bus-nnunet weights import`")
    return {"hf_hub_id": cfg.hf_hub_id, "license": cfg.license, "origin_url": cfg.origin_url}


def _timm_version() -> str:
    import timm
    return timm.__version__


# -- cache ---------------------------------------------------------------------------------------------
def weights_dir(environ: Mapping[str, str] = os.environ) -> Path:
    return Path(environ.get(WEIGHTS_DIR_ENV) or DEFAULT_WEIGHTS_DIR).expanduser()


@functools.lru_cache(maxsize=64)
def _sha256_memo(path: str, size: int, mtime_ns: int) -> str:  # size/mtime: a changed file is hashed again
    return sha256_of(path)


@dataclass(frozen=True)
class CacheEntry:
    name: str
    path: Optional[Path]  # the weights file (None: not in the cache)
    record: Optional[dict]
    problem: Optional[str] = None  # a record whose file is missing or altered

    @property
    def ok(self) -> bool:
        return self.record is not None and self.problem is None

    def repair(self) -> str:
        """Both ways to replace broken cached weights, the way they came first (the record's source)."""
        fetch = f"`bus-nnunet weights fetch {self.name} --overwrite` (downloads them from the Hugging Face Hub)"
        source = str((self.record or {}).get("source") or "")
        imported = source[len(IMPORT_SOURCE):] if source.startswith(IMPORT_SOURCE) else None
        file = imported if imported and os.path.isfile(imported) else "FILE"
        import_ = f"`bus-nnunet weights import {file} --as {self.name} --overwrite`"
        if imported:
            return f"{import_} (the file they were imported from), or {fetch}"
        return f"{fetch}, or {import_} (a checkpoint you brought)"

    def broken_message(self) -> str:
        """The one message for a cache entry with a problem: what is wrong and both ways back."""
        return f"cached weights {self.name}: {self.problem}; fix: {self.repair()}"


def record_path(name: str, environ: Mapping[str, str] = os.environ) -> Path:
    return weights_dir(environ) / f"{name}.json"


def cache_entry(name: str, environ: Mapping[str, str] = os.environ) -> CacheEntry:
    """The cache's state for ``name``, with the file's sha256 checked against its record."""
    rec_path = record_path(name, environ)
    if not rec_path.is_file():
        return CacheEntry(name, None, None)
    try:
        record = json.loads(rec_path.read_text())
        path = rec_path.parent / record["file"]
        expected = record["sha256"]
    except (ValueError, KeyError, TypeError) as e:
        return CacheEntry(name, None, None, f"unreadable record {rec_path} ({type(e).__name__}: {e})")
    if not path.is_file():
        return CacheEntry(name, path, record, f"{path} is missing (recorded in {rec_path})")
    stat = path.stat()
    actual = _sha256_memo(str(path), stat.st_size, stat.st_mtime_ns)
    if actual != expected:
        return CacheEntry(name, path, record, f"{path} has sha256 {actual}, its record {rec_path} says {expected} "
                                              f"(altered or truncated)")
    return CacheEntry(name, path, record)


def _fix(name: str) -> str:
    return (f"`bus-nnunet weights fetch {name}` (with internet), or `bus-nnunet weights import FILE --as {name}`, "
            f"or copy a fetched {WEIGHTS_DIR_ENV} folder here")


def verify_checkpoint(name: str, path) -> List[str]:
    """Load ``path`` into every network part that uses weights ``name`` (the one loading path);
    the reports. Raises PretrainedMismatchError naming the file if it does not fit."""
    from bus_nnunet.network_architectures import create_model
    reports = []
    for consumer in catalogue()[name]:
        network = create_model(consumer.network, in_channels=1, **dict(consumer.part.probe_kwargs))
        reports.append(f"{consumer.network}{'/' + consumer.part.slot if consumer.part.slot else ''}: "
                       f"{consumer.part.load(network, str(path))}")
    return reports


def _partial_prefix(name: str) -> str:
    """Temporary files and folders of weights ``name`` in the cache are io_utils' partials of
    ``<cache>/<name>``, so that :func:`remove_stale_partials` removes those a killed import or fetch
    left (whatever the suffix of the file being written)."""
    return f".{name}.partial-{os.getpid()}-"


def store(name: str, source_file, source: str, overwrite: bool = False,
          environ: Mapping[str, str] = os.environ, log=print) -> CacheEntry:
    """Copy ``source_file`` into the cache as weights ``name`` (verified, hashed, recorded atomically)."""
    folder = weights_dir(environ)
    source_file = Path(source_file)
    suffix = source_file.suffix if source_file.suffix in CHECKPOINT_SUFFIXES else ".pth"
    old = cache_entry(name, environ)
    if (old.record is not None or old.problem) and not overwrite:
        raise UserError(f"weights {name} are already in the cache ({record_path(name, environ)}); pass --overwrite "
                        f"to replace them")
    for report in verify_checkpoint(name, source_file):
        log(f"  fits {report}")
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{name}{suffix}"
    remove_stale_partials(folder / name, log=log)
    fd, tmp = tempfile.mkstemp(prefix=_partial_prefix(name), dir=folder)
    try:
        give_umask_mode(tmp, directory=False)
        h = hashlib.sha256()
        with os.fdopen(fd, "wb") as out, open(source_file, "rb") as src:
            for block in iter(lambda: src.read(1 << 20), b""):
                h.update(block)
                out.write(block)
        digest = h.hexdigest()
        if sha256_of(tmp) != digest:  # what reached the disk is what was read
            raise UserError(f"writing {target} failed verification (sha256 differs after the copy); disk full?")
        size = os.path.getsize(tmp)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    from bus_nnunet import __version__
    from bus_nnunet.io_utils import atomic_write_json
    atomic_write_json(record_path(name, environ), {
        "weights": name, "file": target.name, "sha256": digest, "bytes": size, "source": source,
        "written": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "bus_nnunet": __version__})
    if old.path is not None and old.path != target and old.path.is_file():
        old.path.unlink()  # replaced by a file with another suffix
    entry = cache_entry(name, environ)
    if not entry.ok:
        raise UserError(f"cache entry {name} does not verify after writing: {entry.problem}")
    return entry


def fetch(name: str, overwrite: bool = False, environ: Mapping[str, str] = os.environ, log=print) -> CacheEntry:
    """Download weights ``name`` from the Hugging Face Hub (timm's repository) into the cache."""
    check_name(name)
    entry = cache_entry(name, environ)
    if entry.ok and not overwrite:
        log(f"{name}: already cached, {entry.path} (sha256 {entry.record['sha256']})")
        return entry
    if entry.problem and not overwrite:
        raise UserError(entry.broken_message())
    hub = hub_info(name)
    from huggingface_hub import hf_hub_download
    log(f"{name}: downloading {HUB_FILENAME} from https://huggingface.co/{hub['hf_hub_id']} ...")
    folder = weights_dir(environ)
    folder.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(folder / name, log=log)
    with tempfile.TemporaryDirectory(prefix=_partial_prefix(name), dir=folder) as staging:
        try:
            downloaded = hf_hub_download(repo_id=hub["hf_hub_id"], filename=HUB_FILENAME, local_dir=staging)
        except Exception as e:  # offline, proxy, missing repository: say what to do instead
            raise UserError(f"downloading {name} from {hub['hf_hub_id']} failed ({type(e).__name__}: {e}). "
                            f"On a machine without internet, fetch on one with it and copy "
                            f"{folder} across, or use `bus-nnunet weights import FILE --as {name}`") from None
        entry = store(name, downloaded, f"huggingface:{hub['hf_hub_id']}/{HUB_FILENAME}", overwrite=True,
                      environ=environ, log=log)
    log(f"{name}: cached {entry.path} (sha256 {entry.record['sha256']}, {entry.record['bytes']:,} bytes)")
    return entry


# -- what a trainer uses -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Resolution:
    weights: str
    env: str
    state: str  # "file" (the variable), "cache", "off" (BUS_NNUNET_PRETRAINED=none), "missing"
    path: Optional[str] = None
    sha256: Optional[str] = None
    problem: Optional[str] = None  # set: training must not start (names the fix)

    def summary(self) -> str:
        """A few words for tables."""
        return {"file": f"file {self.path}", "cache": "cache", "off": f"none ({PRETRAINED_ENV}=none)",
                "missing": "none: not cached, from scratch"}[self.state] if not self.problem else "ERROR (see log)"

    def describe(self) -> str:
        if self.problem:
            return f"ERROR: {self.problem}"
        if self.state == "file":
            return f"${self.env}={self.path}"
        if self.state == "cache":
            return f"cache {self.path} (sha256 {self.sha256})"
        if self.state == "off":
            return f"none ({PRETRAINED_ENV}=none: from scratch on purpose)"
        return f"not cached: trains from scratch (fix: bus-nnunet weights fetch {self.weights})"


def pretrained_mode(environ: Mapping[str, str] = os.environ) -> str:
    mode = (environ.get(PRETRAINED_ENV) or "auto").strip().lower()
    if mode not in PRETRAINED_MODES:
        raise UserError(f"{PRETRAINED_ENV}={environ.get(PRETRAINED_ENV)!r}: choose one of {', '.join(PRETRAINED_MODES)}")
    return mode


def resolve(weights: str, env: str, environ: Mapping[str, str] = os.environ) -> Resolution:
    """Which file weights ``weights`` come from for a trainer whose override variable is ``env``
    (the order is the module docstring's)."""
    mode = pretrained_mode(environ)
    if mode == "none":
        return Resolution(weights, env, "off")
    path = environ.get(env)
    if path:
        problem = None if os.path.isfile(path) else (f"{env}={path}: no such file. Point it at a local checkpoint, "
                                                     f"or unset it to use the cache")
        return Resolution(weights, env, "file", path, problem=problem)
    entry = cache_entry(weights, environ)
    if entry.problem:
        return Resolution(weights, env, "missing", problem=entry.broken_message())
    if entry.ok:
        return Resolution(weights, env, "cache", str(entry.path), entry.record["sha256"])
    problem = (f"{PRETRAINED_ENV}=require but weights {weights} are not cached in {weights_dir(environ)} and "
               f"${env} is unset; fix: {_fix(weights)}") if mode == "require" else None
    return Resolution(weights, env, "missing", problem=problem)


def missing_warning(trainer: str, missing: Sequence[Resolution], environ: Mapping[str, str] = os.environ) -> str:
    """The warning a trainer prints before training from scratch for lack of weights."""
    lines = [f"WARNING: {trainer} was published with ImageNet-pretrained weights, but these are neither cached "
             f"in {weights_dir(environ)} nor given; the affected parts TRAIN FROM SCRATCH, so results are not "
             f"comparable with the paper's:"]
    lines += [f"    {r.weights}: bus-nnunet weights fetch {r.weights}   (or export {r.env}=/path/to/file)"
              for r in missing]
    lines.append(f"  To train from scratch on purpose and silence this: export {PRETRAINED_ENV}=none")
    return "\n".join(lines)


def trainer_sources(cls) -> List[Tuple[str, str, Optional[str]]]:
    """``(weights name, override variable, slot)`` for a trainer class (empty: no pretrained parts)."""
    return [(part.weights, env, part.slot) for part, env in getattr(cls, "pretrained_sources", lambda: [])()]
