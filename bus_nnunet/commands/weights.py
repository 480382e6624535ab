"""``bus-nnunet weights``: the pretrained encoders the trainers use, in one shared cache.

* ``list`` -- every weights name (cached? path, sha256, licence) and every trainer's source;
* ``fetch [NAME ...|--all]`` -- download from the Hugging Face Hub (timm's repositories);
* ``import FILE --as NAME`` -- the air-gapped route: copy a checkpoint you brought.

See ``bus_nnunet.weights`` for the cache layout and the order a trainer looks in.
"""
from __future__ import annotations

import itertools
import json
import textwrap


def register(subparsers):
    p = subparsers.add_parser("weights", help="pretrained encoder weights: list, fetch (Hugging Face Hub), import")
    sub = p.add_subparsers(dest="weights_command", metavar="ACTION", required=True)
    ls = sub.add_parser("list", help="weights, cache state (path, sha256), and what each trainer will load")
    ls.add_argument("--json", action="store_true", help="one JSON object")
    ls.set_defaults(func=run_list)
    fe = sub.add_parser("fetch", help="download weights into the cache ($BUS_NNUNET_WEIGHTS_DIR) from the Hub")
    fe.add_argument("names", nargs="*", metavar="NAME", help="weights names (or trainer names), see `weights list`")
    fe.add_argument("--all", action="store_true", help="every weights name")
    fe.add_argument("--overwrite", action="store_true", help="download again even if cached")
    fe.set_defaults(func=run_fetch)
    im = sub.add_parser("import", help="copy a local checkpoint into the cache as weights NAME (checked, hashed)")
    im.add_argument("file", metavar="FILE", help="checkpoint (.pth/.safetensors; timm, torchvision or official layout)")
    im.add_argument("--as", dest="name", required=True, metavar="NAME", help="weights name, see `weights list`")
    im.add_argument("--overwrite", action="store_true", help="replace cached weights of that name")
    im.set_defaults(func=run_import)


def listing() -> dict:
    """The cache and every trainer's pretrained sources, as data."""
    from bus_nnunet import weights
    from bus_nnunet.trainers import TRAINERS
    entries = []
    for name, consumers in weights.catalogue().items():
        entry = weights.cache_entry(name)
        try:
            hub = weights.hub_info(name)
        except Exception:  # an old timm without this tag: import still works
            hub = {"hf_hub_id": None, "license": None, "origin_url": None}
        entries.append({"weights": name, "cached": entry.ok, "path": str(entry.path) if entry.path else None,
                        "sha256": entry.record["sha256"] if entry.ok else None,
                        "source": entry.record.get("source") if entry.ok else None, "problem": entry.problem,
                        "fix": entry.broken_message() if entry.problem else None,
                        "hub": hub["hf_hub_id"], "license": hub["license"],
                        "networks": sorted({c.network for c in consumers})})
    trainers = []
    for name, cls in sorted(TRAINERS.items()):
        sources = [{"weights": part.weights, "slot": part.slot, "env": env, "state": r.state, "path": r.path,
                    "summary": r.summary(), "uses": r.describe()}
                   for part, env in cls.pretrained_sources() for r in [weights.resolve(part.weights, env)]]
        trainers.append({"trainer": name, "pretrained": sources})
    return {"cache": str(weights.weights_dir()), "mode": weights.pretrained_mode(), "weights": entries,
            "trainers": trainers}


def format_listing(data: dict) -> str:
    from bus_nnunet.text_tables import format_table
    from bus_nnunet.weights import PRETRAINED_ENV, WEIGHTS_DIR_ENV
    rows = [(e["weights"], "cached" if e["cached"] else ("BROKEN" if e["problem"] else "not cached"),
             e["sha256"] or "-", e["path"] if e["cached"] else (e["problem"] or "-"), e["license"] or "?",
             ", ".join(e["networks"])) for e in data["weights"]]
    out = [f"cache: {data['cache']} (${WEIGHTS_DIR_ENV}); {PRETRAINED_ENV}={data['mode']}", "",
           format_table(["weights", "state", "sha256", "path", "licence (timm)", "networks"], rows), ""]
    groups = {}  # trainers with the same sources share rows
    for t in data["trainers"]:
        key = tuple((p["weights"], p["env"], p["summary"]) for p in t["pretrained"])
        groups.setdefault(key, []).append(t["trainer"])
    rows = []
    for key, names in groups.items():
        if rows:
            rows.append(("", "", "", ""))
        names = textwrap.wrap(", ".join(names), 60) + ([f"({len(names)} trainers)"] if len(names) > 2 else [])
        sources = [(w, "$" + env, summary) for w, env, summary in key] or [("-", "-", "none (no pretrained parts)")]
        for name, source in itertools.zip_longest(names, sources, fillvalue=None):
            rows.append((name or "", *(source or ("", "", ""))))
    out.append(format_table(["trainers", "weights", "override", "uses now"], rows))
    out += [f"\nBROKEN {e['fix']}" for e in data["weights"] if e["fix"]]
    missing = [e["weights"] for e in data["weights"] if not e["cached"] and not e["fix"]]
    if missing:
        out.append(f"\nFetch the missing ones (with internet): bus-nnunet weights fetch {' '.join(missing)}")
    return "\n".join(out)


def run_list(args) -> int:
    data = listing()
    print(json.dumps(data, indent=2) if args.json else format_listing(data))
    return 0


def _names(args):
    from bus_nnunet import weights
    from bus_nnunet.errors import UserError
    known = weights.catalogue()
    if args.all == bool(args.names):
        raise UserError("give weights names (see `bus-nnunet weights list`) or --all")
    if args.all:
        return list(known)
    names = []
    for n in args.names:
        if n in known:
            names.append(n)
            continue
        from bus_nnunet.trainers import TRAINERS
        cls = TRAINERS.get(n)
        if cls is None:
            weights.check_name(n)  # raises, listing the known names
        names += [part.weights for part, _ in cls.pretrained_sources()]
    return list(dict.fromkeys(names))


def run_fetch(args) -> int:
    from bus_nnunet import weights
    for name in _names(args):
        weights.fetch(name, overwrite=args.overwrite)
    return 0


def run_import(args) -> int:
    import os
    from bus_nnunet import weights
    from bus_nnunet.errors import UserError
    name = weights.check_name(args.name)
    if not os.path.isfile(args.file):
        raise UserError(f"{args.file}: no such file")
    print(f"{name}: checking {args.file} ...")
    entry = weights.store(name, args.file, weights.IMPORT_SOURCE + os.path.abspath(args.file),
                          overwrite=args.overwrite)
    print(f"{name}: cached {entry.path} (sha256 {entry.record['sha256']}, {entry.record['bytes']:,} bytes)")
    return 0
