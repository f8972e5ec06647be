"""The ``embedpipe`` command: thin verbs over the Python API.

Every verb has ``--help`` and ``--json`` (one JSON object on stdout). Bad input is one line on stderr
and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .core.errors import EmbedpipeError
from .core.log import show_progress

EXIT_ERROR = 1
EXIT_INTERRUPTED = 130


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _ints(text: str, flag: str) -> list[int]:
    try:
        return [int(t) for t in _csv(text)]
    except ValueError:
        raise EmbedpipeError(f"{flag} takes whole numbers separated by commas, got {text!r}") from None


def parse_params(pairs: Sequence[str], heads: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``key=value`` (every head) or ``head.key=value``; values are JSON when they parse, else strings."""
    params: dict[str, dict[str, Any]] = {h: {} for h in heads}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise EmbedpipeError(f"--param {pair!r}: expected key=value")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        if isinstance(value, list):
            value = tuple(value)
        scope, dot, name = key.rpartition(".")
        targets = [scope] if dot else list(heads)
        for head in targets:
            if head not in params:
                raise EmbedpipeError(f"--param {pair!r} names head {head!r}, which is not in --head")
            params[head][name if dot else key] = value
    return params


def _emit(args: argparse.Namespace, obj: dict[str, Any], text: str) -> None:
    if args.json:  # plain JSON values, floats rounded to what they mean (table.json_ready)
        from .table import json_ready  # start-up: each verb imports only what it runs

        print(json.dumps(json_ready(obj)))  # ASCII: non-UTF-8 names come out as \u escapes
        return
    try:
        print(text)
    except UnicodeEncodeError:  # a name the terminal's encoding cannot show (e.g. non-UTF-8 bytes)
        encoding = getattr(sys.stdout, "encoding", None) or "utf-8"
        print(text.encode(encoding, "backslashreplace").decode(encoding))


def cmd_list(args: argparse.Namespace) -> None:
    from .backbones import DESCRIPTIONS as BB  # start-up: each verb imports only what it runs
    from .data import list_datasets
    from .heads import CLASSIFIER_DESCRIPTIONS
    from .heads import DESCRIPTIONS as HD

    table = {"backbones": BB, "heads": {**HD, **CLASSIFIER_DESCRIPTIONS}, "datasets": {n: "built-in" for n in list_datasets()}}[args.what]
    if args.verbose and args.what == "heads":
        heads = {name: {"description": table[name], "parameters": head_parameters(name)} for name in sorted(table)}
        text = "\n\n".join(_head_text(name, h) for name, h in heads.items())
        _emit(args, {"heads": heads}, f"{text}\n\nSet one with: embedpipe train --head NAME --param KEY=VALUE")
        return
    _emit(args, {args.what: table}, "\n".join(f"{k:14s} {v}" for k, v in sorted(table.items())))


def head_parameters(name: str) -> list[dict[str, Any]]:
    """A head's hyperparameters from its class docstring's numpydoc "Parameters" section: name, type,
    default (the value the class uses) and the first sentence of the description."""
    from .core.docstrings import numpydoc_parameters  # start-up: imported by list -v alone
    from .heads import classifier_class  # start-up: the head classes (and torch) only for list -v

    cls = classifier_class(name)
    defaults = cls().get_params()
    return [{"name": p.name, "type": p.type, "default": defaults.get(p.name, p.default),
             "description": p.description.replace("``", "")} for p in numpydoc_parameters(cls.__doc__)]


def _head_text(name: str, head: dict[str, Any]) -> str:
    params = head["parameters"]
    rows = [(p["name"], _short(p["default"]), p["description"]) for p in params]
    w0 = max((len(r[0]) for r in rows), default=0)
    w1 = max((len(r[1]) for r in rows), default=0)
    lines = [f"{name}: {head['description']}"]
    lines += [f"  {n:{w0}s}  {d:{w1}s}  {text}" for n, d, text in rows]
    return "\n".join(lines)


def _short(value: Any) -> str:
    """A default for one line: long tuples show their ends (Cs: 0.0001 ... 10000.0, 9 values)."""
    if isinstance(value, tuple | list) and len(value) > 4:
        return f"({value[0]!r}, ..., {value[-1]!r}; {len(value)} values)"
    return repr(value)


def _extract_options(args: argparse.Namespace) -> dict[str, Any]:
    from .data import SplitRule  # start-up: each verb imports only what it runs

    options: dict[str, Any] = {
        "layers": tuple(_csv(args.layers)),
        "weights": args.weights,
        "device": args.device,
        "precision": args.precision,
        "dtype": args.dtype,
        "batch_size": args.batch_size,
        "num_workers": args.workers,
        "shard_size": args.shard_size,
        "image_size": args.image_size,
        "jpeg_draft": args.jpeg_draft,
        "gpu_decode": args.gpu_decode,
        "split": SplitRule(seed=args.split_seed, val=args.val_fraction, test=args.test_fraction),
        "signature": args.signature,
    }
    return options


def cmd_extract(args: argparse.Namespace) -> None:
    from .extract import (
        run_extract,  # start-up: torch and the models load only for the verbs that need them
    )

    cache, stats = run_extract(args.data, args.backbone, cache_dir=args.cache_dir, progress=not args.quiet,
                               engine=args.engine, ray_address=args.ray_address,
                               ray_cpus_per_worker=args.ray_cpus_per_worker, **_extract_options(args))
    _emit(args, {**cache.summary(), "stats": vars(stats)}, str(cache.path))  # the path is absolute


def cmd_info(args: argparse.Namespace) -> None:
    if args.head_file:
        if args.cache or args.verify:
            raise EmbedpipeError("info takes --cache (with --verify) or --head-file, not both")
        _head_file_info(args)
        return
    if not args.cache:
        raise EmbedpipeError("info needs --cache DIR (a cache folder printed by extract) or --head-file FILE")
    from .cache import (  # start-up: each verb imports only what it runs
        open_cache,
        verify_cache,
        verify_message,
    )
    from .table import format_table

    if args.verify and (problems := verify_cache(args.cache)):
        raise EmbedpipeError(verify_message(args.cache, problems))
    cache = open_cache(args.cache)
    brief = cache.summary()
    if args.verify:
        brief["verified"] = f"all {cache.n_shards} shards read in full; " + (
            "every checksum matches" if cache.checksummed
            else "written without checksums by an older embedpipe, so flipped bytes cannot be detected")
    summary = {**brief, "failed_ids": [list(f) for f in cache.failed], "meta": cache.meta}
    about = {"cache": brief["path"], "dataset": f"{brief['dataset']} ({brief['classes']} classes)",
             "backbone": brief["backbone"], "source": cache.meta.get("source", "?"), "key": brief["key"],
             "disk": _bytes(brief["disk_bytes"]), "dtype": cache.meta.get("dtype"),
             "split rule": _split_rule(cache.meta.get("split_rule")), "created": cache.meta.get("created_at"),
             "failed": brief["failed"]}
    if "verified" in brief:
        about["verified"] = brief["verified"]
    width = max(map(len, about))
    lines = [f"{k:{width}s}  {v}" for k, v in about.items()]
    rows = brief["rows"]
    lines += ["", format_table([{"split": k, "rows": v} for k, v in rows.items()] + [{"split": "all", "rows": sum(rows.values())}]),
              "", format_table([{"layer": n, "shape": " x ".join(map(str, shape)), "dim": cache.dims[n]}
                                for n, shape in brief["layers"].items()])]
    if cache.failed:
        lines += ["", format_table([{"skipped": i, "reason": reason} for i, reason in cache.failed])]
    _emit(args, summary, "\n".join(lines))


def _bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"


def _split_rule(rule: Any) -> str:
    if not isinstance(rule, dict):
        return str(rule)
    if rule.get("provided_by_source"):
        return "given by the data (train/val/test folders or a split column)"
    return (f"seeded per class: {rule.get('val', 0):.0%} val, {rule.get('test', 0):.0%} test, the rest train "
            f"(seed {rule.get('seed')})")


def _head_file_info(args: argparse.Namespace) -> None:
    from .heads.io import read_head_file  # start-up: each verb imports only what it runs
    from .table import format_table

    doc, arrays = read_head_file(args.head_file)
    info = doc.get("info", {})
    path = str(Path(args.head_file).expanduser().resolve())
    obj = {"path": path, **doc, "arrays": {k: {"dtype": d, "shape": list(s)} for k, (d, s) in arrays.items()}}
    about = {"head file": path, "format": f"{doc.get('format')} {doc.get('version')}", "head": doc.get("head"),
             "cache": info.get("cache", "-"), "backbone": (info.get("backbone") or {}).get("spec", "-"),
             "layer": info.get("layer", "-"), "classes": len(info.get("label_names") or []) or "-",
             "features": doc.get("n_features_in")}
    val = info.get("val_split") or {}
    if val:
        about["val rows"] = (val.get("note") or "the cache's val split") + f" ({val.get('rows')} rows)"
    width = max(map(len, about))
    lines = [f"{k:{width}s}  {v}" for k, v in about.items()]
    params = doc.get("params", {})
    lines += ["", format_table([{"parameter": k, "value": _short(v)} for k, v in params.items()])]
    learned = {k: v for k, v in doc.get("state", {}).items() if isinstance(v, int | float | str | type(None))
               and not (isinstance(v, str) and len(v) > 60)}  # scalars; long texts (a LightGBM model) in --json
    if learned:
        lines += ["", format_table([{"learned": k, "value": f"{v:g}" if isinstance(v, float) else v}
                                    for k, v in learned.items()])]
    lines += ["", format_table([{"array": k, "dtype": d, "shape": " x ".join(map(str, s)) or "()"}
                                for k, (d, s) in arrays.items()])]
    _emit(args, obj, "\n".join(lines))


def cmd_export(args: argparse.Namespace) -> None:
    from .cache import open_cache  # start-up: each verb imports only what it runs

    stats = open_cache(args.cache).export(args.out, args.format, _csv(args.layer) if args.layer else None,
                                          args.dtype)
    text = (f"wrote {stats.rows} rows x {', '.join(stats.layers)} ({stats.dtype}) to {stats.out} "
            f"({_bytes(stats.bytes)}, {stats.seconds:.1f}s); left out {stats.skipped_failed} rows that failed to decode")
    _emit(args, vars(stats), text)


def cmd_train(args: argparse.Namespace) -> None:
    from .table import format_table  # start-up: each verb imports only what it runs
    from .train import few_shot, train_heads

    heads = _csv(args.head)
    if args.shots is not None:
        seeds = _ints(args.seeds, "--seeds")
        res = few_shot(args.cache, heads, shots=args.shots, seeds=seeds, layer=args.layer or "pooled",
                       params=parse_params(args.param, heads))
        rows = [{"head": r["head"], "layer": r["layer"], "shots": r["shots"], "seeds": r["seeds"],
                 "val_acc": _pm(r["val_acc_mean"], r["val_acc_std"]),
                 "test_acc": _pm(r["test_acc_mean"], r["test_acc_std"]),
                 "fit_s": r["fit_s_mean"], "n_train": r["n_train"]} for r in res["summary"]]
        _emit(args, res, format_table(rows))
        return
    from .heads.select import RULES  # start-up: each verb imports only what it runs

    results = train_heads(args.cache, heads, layer=args.layer, params=parse_params(args.param, heads), out=args.out,
                          selection=RULES[args.selection]())
    rows = [r.to_dict() for r in results]
    note = results[0].val_split.get("note") if results else None
    if note:
        print(f"embedpipe: {note}", file=sys.stderr)
    shown = [{**row, "chosen": _chosen_text(row["chosen"]),  # a val accuracy on few images shows its standard error
              "val_acc": _pm(row["val_acc"], row["val_se"]) if row["warnings"] else row["val_acc"]} for row in rows]
    table = format_table(shown, ["head", "layer", "val_acc", "test_acc", "chosen", "fit_s", "n_train", "n_classes", "path"])
    for r in results:
        if r.selection:
            rows_used = f" ({r.selection['val_rows']} rows)" if r.selection.get("val_rows") else ""
            if r.selection.get("rule") == "kfold":
                rows_used = f" ({r.selection['val_rows']} rows, each held out once)"
            table += f"\n{r.head}: {r.selection['how']}; val: {r.selection['val']}{rows_used}"
        if "layer_contributions_" in r.report:
            kept = r.report.get("layer_kept_", {})
            table += f"\n{r.head}: layer contributions (share of weight norm, features kept; kept {r.report['keep_']:.0%}):"
            table += "".join(f"\n  {name:10s} {share:6.1%}  {kept.get(name, 0)} features"
                             for name, share in r.report["layer_contributions_"].items())
    _emit(args, {"results": rows}, table)


def _chosen_text(chosen: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in chosen.items())


def _pm(mean: float | None, std: float | None) -> str:
    return "-" if mean is None else f"{mean:.3f} ± {std:.3f}"


def cmd_advise(args: argparse.Namespace) -> None:
    from .advise import advise, format_advice  # start-up: each verb imports only what it runs

    report = advise(args.cache, out=args.out, plot=not args.no_plot)
    _emit(args, report, format_advice(report))


def cmd_audit(args: argparse.Namespace) -> None:
    from .audit import audit  # start-up: each verb imports only what it runs

    result = audit(args.cache, layer=args.layer, top=args.top, out=args.out, data=args.data,
                   search=args.search, progress=not args.json)
    shown = result.to_json()
    _emit(args, shown, _audit_text(shown))


def _audit_text(shown: dict[str, Any]) -> str:
    s = shown["summary"]
    d = s["duplicates"]
    rows = s["rows"]
    lines = [f"audited {rows['audited']} rows of {s['cache']} ({s['layer']}; {rows['failed']} failed to decode)",
             f"duplicates: {d['count']} pairs ({d['exact']} exact, {d['near']} near; {d['across_splits']} across "
             f"splits); leaks: {d['leaked_rows']} val/test rows with a near-copy in train",
             f"  method: {s['method']['search']}, verified by {s['method']['verify']}"]
    if d["unverified"]:
        lines.append(f"  {d['unverified']} pairs are not verified (their images could not be opened; cosine >= "
                     f"{s['thresholds']['cosine_alone']} alone): give --data when the cache does not know where they are")
    for pair in shown["duplicates"][:10]:
        lines.append(f"  {'LEAK ' if pair['leak'] else ''}{pair['a']} ({pair['splits'][0]}) ~ {pair['b']} "
                     f"({pair['splits'][1]}): {pair['similarity']:.3f}")
    for name in ("label_issues", "outliers"):
        part = s[name]
        lines.append(f"{name.replace('_', ' ')}: {part['count']}" + (f" ({part['status']})" if part.get("status") != "ok" else ""))
    cb = s["class_balance"]
    lines.append(f"classes: {cb['classes']}, smallest {cb['smallest'][0]} ({cb['smallest'][1]}), largest "
                 f"{cb['largest'][0]} ({cb['largest'][1]})")
    if any(s[name]["more"] for name in ("duplicates", "label_issues", "outliers")):
        lines.append(f"lists capped at {s['top']} (--top); the full result: {s.get('saved', '')}")
    elif s.get("saved"):
        lines.append(f"saved: {s['saved']}")
    if s.get("report"):
        lines.append(f"report: {s['report']}")
    return "\n".join(lines)


def cmd_evaluate(args: argparse.Namespace) -> None:
    from .train import evaluate  # start-up: each verb imports only what it runs

    m = evaluate(args.head_file, args.cache, args.split)
    if m.get("note"):
        print(f"embedpipe: {m['note']}", file=sys.stderr)
    text = (f"{m['head']} on {m['split']} ({m['n']} images): top-1 {m['top1']:.4f}  top-5 {m['top5']:.4f}  "
            f"mean per-class recall {m['mean_per_class_recall']:.4f}")
    _emit(args, m, text)


def cmd_predict(args: argparse.Namespace) -> int:
    from .predict import predict  # start-up: each verb imports only what it runs

    results = predict(args.head_file, args.images, top_k=args.top_k, device=args.device)
    lines = []
    for r in results:
        if "error" in r:
            lines.append(f"{r['image']}: error: {r['error']}")
        else:
            lines.append(f"{r['image']}: " + ", ".join(f"{label} {p:.3f}" for label, p in r["top"]))
    _emit(args, {"predictions": results}, "\n".join(lines))
    return EXIT_ERROR if any("error" in r for r in results) else 0


def cmd_bench(args: argparse.Namespace) -> None:
    from .bench import BenchConfig, json_rows, run_bench  # start-up: bench's heavy parts
    from .report import render_markdown  # start-up: each verb imports only what it runs

    flags: dict[str, Any] = {
        "name": args.name,
        "datasets": _csv(args.data) if args.data else None,
        "backbones": _csv(args.backbone) if args.backbone else None,
        "layers": _csv(args.layers) if args.layers else None,
        "heads": _csv(args.heads) if args.heads else None,
        "shots": _ints(args.shots, "--shots") if args.shots else None,
        "seeds": _ints(args.seeds, "--seeds") if args.seeds else None,
        "cache_dir": args.cache_dir,
        "results_dir": args.results_dir,
        "engine": args.engine,
        "ray_address": args.ray_address,
    }
    extract = {k: v for k, v in {"batch_size": args.batch_size, "num_workers": args.workers,
                                 "precision": args.precision, "device": args.device,
                                 "ray_cpus_per_worker": args.ray_cpus_per_worker}.items() if v is not None}
    if args.config:
        config = BenchConfig.from_toml(args.config, **flags)
    else:
        config = BenchConfig.build(**{k: v for k, v in flags.items() if v is not None})
    if extract:
        config = BenchConfig.build(**{**config.__dict__, "extract": {**config.extract, **extract}})
    if args.weights:
        if len(config.backbones) != 1:
            raise EmbedpipeError("--weights needs exactly one --backbone; use a config file's [weights] table")
        config = BenchConfig.build(**{**config.__dict__, "weights": {config.backbones[0]: args.weights}})
    rows = run_bench(config, progress=not args.quiet)
    csv_path = (Path(config.results_dir) / f"{config.name}.csv").resolve()
    _emit(args, {"results": json_rows(rows), "csv": str(csv_path)}, render_markdown(config, rows))


DATA_HELP = ("what to embed: an image folder (one subfolder per class, optionally under train/, val/ and "
             "test/), a CSV manifest (columns path,label[,split]), a built-in set (digits, glyphs: "
             "`embedpipe list datasets`) or torchvision:CIFAR10 / torchvision:CIFAR100 (downloaded by "
             "torchvision on first use into $EMBEDPIPE_DATA, else <cache root>/torchvision)")
CACHE_HELP = "a cache folder, as printed by `embedpipe extract` (required)"


def _add_extract_flags(p: argparse.ArgumentParser) -> None:
    from .backbones import DEFAULT_BACKBONE  # start-up: --help needs no torch
    from .core.paths import CACHE_RULE

    p.add_argument("--backbone", default=DEFAULT_BACKBONE,
                   help="backbone spec: effnet-lite0, timm:<name>, open_clip:<arch>[/<tag>]; "
                        "`embedpipe list backbones` (default: %(default)s)")
    p.add_argument("--weights", metavar="FILE",
                   help="local weights file for the backbone (a timm or open_clip checkpoint) (default: the "
                        "spec's own weights)")
    p.add_argument("--layers", default="pooled",
                   help="comma-separated layers to store from one forward pass: pooled, block<k>, "
                        "block<k>:grid<G>, block<k>:map, logits (default: %(default)s)")
    p.add_argument("--cache-dir", metavar="DIR",
                   help=f"cache root; every working folder shares it (default: {CACHE_RULE})")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N] (default: %(default)s: CUDA when present)")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                   help="autocast precision of the forward pass (default: %(default)s: bf16 on GPUs that support "
                        "it, else fp16; bf16 on CPUs with native bf16, else fp32)")
    p.add_argument("--dtype", default="float16", choices=["float16", "float32"],
                   help="stored feature dtype (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="images per forward pass (default: 256 on GPU, 64 on CPU)")
    p.add_argument("--workers", type=int, default=None,
                   help="decoding processes; 0 = decode in this process (default: on GPU one per core, at "
                        "most 16; on CPU 1 when there are 2 or more cores)")
    p.add_argument("--shard-size", type=int, default=1024,
                   help="rows per shard file, the unit of resume (default: %(default)s)")
    p.add_argument("--image-size", type=int, default=None,
                   help="model input side in px for timm convnets (default: the model's own, e.g. 224)")
    p.add_argument("--no-jpeg-draft", dest="jpeg_draft", action="store_false",
                   help="decode large JPEGs at full size (default: off: reduced DCT scale, never below model size)")
    p.add_argument("--no-gpu-decode", dest="gpu_decode", action="store_false",
                   help="on CUDA, decode every image on the CPU (default: off: JPEGs on the GPU with nvJPEG)")
    p.add_argument("--split-seed", type=int, default=0,
                   help="seed of the split rule used when the data brings no train/val/test split "
                        "(default: %(default)s)")
    p.add_argument("--val-fraction", type=float, default=0.15,
                   help="share of each class put in val when the data brings no split; val selects the "
                        "heads' hyperparameters (default: %(default)s)")
    p.add_argument("--test-fraction", type=float, default=0.15,
                   help="share of each class put in test when the data brings no split; test gives the "
                        "reported score (default: %(default)s)")
    p.add_argument("--signature", default="stat", choices=["stat", "content"],
                   help="what identifies a file in the key: stat (size+mtime, free) or content (sha256 of its "
                        "bytes: catches edits that keep size and mtime; reads every file) (default: %(default)s)")
    p.add_argument("--quiet", action="store_true",
                   help="no progress bar, size estimate or summary line on stderr; the cache path is still "
                        "printed (default: off)")
    _add_engine_flags(p, "local")


def _add_engine_flags(p: argparse.ArgumentParser, default: str | None) -> None:
    p.add_argument("--engine", default=default, choices=["local", "ray"],
                   help="where shards are computed: this process, or a Ray cluster (same cache either way) "
                        "(default: local)")
    p.add_argument("--ray-address", metavar="ADDRESS",
                   help="Ray cluster to join, e.g. ray://head:10001 (default: start a local Ray instance)")
    p.add_argument("--ray-cpus-per-worker", type=int, metavar="N",
                   help="CPUs per Ray worker (default: one worker per GPU; on CPU-only nodes 1-CPU workers, "
                        "at most 8 per node)")


def build_parser() -> argparse.ArgumentParser:
    from .core.paths import CACHE_RULE  # start-up: --help needs no torch
    from .core.version import __version__

    parser = argparse.ArgumentParser(
        prog="embedpipe", description=__doc__.splitlines()[0] if __doc__ else None,
        epilog=f"Caches go under --cache-dir, else {CACHE_RULE}. `embedpipe VERB --help` describes a verb.")
    parser.add_argument("--version", action="version", version=f"embedpipe {__version__}")
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    def verb(name: str, help_text: str, epilog: str | None = None) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text, epilog=epilog)
        p.add_argument("--json", action="store_true",
                       help="print one JSON object on stdout instead of text (default: off)")
        return p

    p = verb("list", "list registered backbones, heads or built-in datasets")
    p.add_argument("what", choices=["backbones", "heads", "datasets"], help="what to list (required)")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="heads: every head's parameters with type, default and description, from its "
                        "documentation (default: off)")
    p.set_defaults(func=cmd_list)

    p = verb("extract", "embed a dataset once into the HDF5 cache; prints the cache's absolute path",
             epilog="A re-run with the same data and options reuses the cache and says so in one line; "
                    "an interrupted run resumes at the first unfinished shard.")
    p.add_argument("--data", required=True, help=DATA_HELP + " (required)")
    _add_extract_flags(p)
    p.set_defaults(func=cmd_extract)

    p = verb("info", "describe a cache (rows per split, layers, skipped images) or a head file")
    p.add_argument("--cache", help="a cache folder, as printed by `embedpipe extract` (default: none; give this "
                                   "or --head-file)")
    p.add_argument("--verify", action="store_true",
                   help="with --cache: read every shard in full and check every checksum (finds flipped bytes) "
                        "(default: off)")
    p.add_argument("--head-file", metavar="FILE",
                   help="a head file written by `embedpipe train`: its head, parameters, learned values "
                        "(e.g. the chosen C_) and what it was trained on (default: none; give this or --cache)")
    p.set_defaults(func=cmd_info)

    p = verb("export", "write a cache as Parquet, an Arrow file or .npy files (pandas, polars, DuckDB read them)",
             epilog="Columns: id, label (class name), split, one fixed-size list per layer. Rows whose image "
                    "failed to decode are left out and counted. Streams shard by shard: memory stays flat.")
    p.add_argument("--cache", required=True, help=CACHE_HELP)
    p.add_argument("--format", choices=["parquet", "arrow", "npy"], default="parquet",
                   help="parquet or arrow (need pyarrow: pip install \"embedpipe[arrow]\"), or npy: a folder with "
                        "<layer>.npy per layer and rows.csv (id,label,split) (default: %(default)s)")
    p.add_argument("--layer", default=None, help="layer(s) to write, comma-separated (default: every cached layer)")
    p.add_argument("--dtype", choices=["float32", "float16"], default="float32",
                   help="value type of the features (default: %(default)s)")
    p.add_argument("--out", required=True, metavar="PATH", help="file to write (a folder for npy) (required)")
    p.set_defaults(func=cmd_export)

    p = verb("train", "fit heads on a cache (train split; val for selection) and report val/test accuracy "
                      "and the hyperparameters each head chose",
             epilog="Every head's parameters, with defaults: `embedpipe list heads -v`. On a cache without val "
                    "rows (--selection auto): a small train split (under 2,000 images, or under 30 per class) "
                    "selects by stratified 5-fold cross-validation on train; a larger one holds out a seeded 15% "
                    "of each class of train (seed 0), and `embedpipe evaluate --split val` scores on those rows.")
    p.add_argument("--cache", required=True, help=CACHE_HELP)
    p.add_argument("--head", default="logreg",
                   help="head name(s), comma-separated: logreg, mlp, lgbm, knn, ncm, multilayer, finetune, "
                        "zeroshot; `embedpipe list heads` (default: %(default)s)")
    p.add_argument("--layer", default=None,
                   help="cached layer(s) to train on, comma-separated to read several side by side "
                        "(default: pooled; multilayer: every cached vector layer)")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="head hyperparameter, repeatable; head.key=value targets one of several heads; values "
                        "are JSON when they parse (C=0.5, Cs=[0.1,1]), else text; `embedpipe list heads -v` "
                        "lists them (default: each head's own defaults)")
    p.add_argument("--out", metavar="PATH",
                   help="head file (one head) or folder (several) (default: <cache>/heads/<head>-<layer>.npz)")
    p.add_argument("--selection", choices=("auto", "kfold", "holdout"), default="auto",
                   help="how heads select on a cache without val rows: kfold = stratified 5-fold cross-validation "
                        "on train, holdout = a seeded 15%% of each class held out, auto = kfold when train is small "
                        "(under 2,000 images or 30 per class), else holdout (default: %(default)s)")
    p.add_argument("--shots", type=int, metavar="K",
                   help="few-shot: K training images per class per seed, mean ± std over seeds; heads are "
                        "not saved (default: off, the full train split)")
    p.add_argument("--seeds", default="0,1,2", help="few-shot seeds, comma-separated (default: %(default)s)")
    p.set_defaults(func=cmd_train)

    p = verb("advise", "transfer report: how many layers to keep frozen, from a layer sweep and the data's size")
    p.add_argument("--cache", required=True, help=CACHE_HELP)
    p.add_argument("--out", metavar="PNG", help="accuracy-by-depth plot (default: <cache>/advise.png)")
    p.add_argument("--no-plot", action="store_true", help="skip the plot (default: off)")
    p.set_defaults(func=cmd_advise)

    p = verb("audit", "what is wrong with the data: exact and near duplicates, train/test leaks, likely label "
                      "errors, outliers",
             epilog="Near-duplicate candidates come from the cached features and are verified with the images "
                    "(pixel correlation and perceptual hash); exact duplicates from hashing the files (kept in "
                    "<cache>/audit for the next run). The full result is saved as <cache>/audit/audit-<layer>.json.")
    p.add_argument("--cache", required=True, help=CACHE_HELP)
    p.add_argument("--layer", default="pooled", help="the vector layer to compare (default: %(default)s)")
    p.add_argument("--top", type=int, default=1000, metavar="N",
                   help="entries per list in the output and the report; the summary counts the rest "
                        "(default: %(default)s)")
    p.add_argument("--out", metavar="DIR", help="folder of the Markdown report and contact sheets "
                                                "(default: <cache>/audit)")
    p.add_argument("--data", help="where the images are, for caches that do not record it (written by an "
                                  "older embedpipe): the folder, .csv or built-in name extracted from "
                                  "(default: what the cache records)")
    p.add_argument("--search", choices=("auto", "exact", "faiss-ivf", "ivf-pca"), default="auto",
                   help="nearest-neighbour search: exact all pairs, or approximate for large caches (faiss-ivf, "
                        "or ivf-pca without FAISS); auto = exact up to 50,000 rows (default: %(default)s)")
    p.set_defaults(func=cmd_audit)

    p = verb("evaluate", "score a saved head: top-1, top-5, mean per-class recall")
    p.add_argument("--head-file", required=True, metavar="FILE",
                   help="a head file written by `embedpipe train`, e.g. <cache>/heads/logreg-pooled.npz (required)")
    p.add_argument("--cache", help="cache to score on (default: the one the head was trained on)")
    p.add_argument("--split", default="test", choices=["train", "val", "test"],
                   help="rows to score. On a cache without val rows, val is the same seeded carve of train "
                        "that `train` selected on (15%% per class, seed 0) and train the rest; a note says "
                        "so, and a val score is optimistic since those rows chose the hyperparameters "
                        "(default: %(default)s)")
    p.set_defaults(func=cmd_evaluate)

    p = verb("predict", "classify image files with a saved head (rebuilds its backbone)")
    p.add_argument("--head-file", required=True, metavar="FILE",
                   help="a head file written by `embedpipe train`; it names the backbone and layer (required)")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image file(s) to classify (at least one)")
    p.add_argument("--top-k", type=int, default=5, metavar="K",
                   help="labels shown per image, most probable first (default: %(default)s)")
    p.add_argument("--device", default=None,
                   help="auto, cpu or cuda[:N] (default: the device recorded in the head file)")
    p.set_defaults(func=cmd_predict)

    p = verb("bench", "datasets x backbones x layers x heads (x shots x seeds) -> CSV, Markdown and plots; resumable")
    p.add_argument("--config", metavar="TOML",
                   help="TOML file with any BenchConfig fields; flags given here override it (default: none)")
    p.add_argument("--name", help="results name: <results-dir>/<name>.csv/.md/-*.png (default: bench, or the "
                                  "config file's name)")
    p.add_argument("--data", help="dataset(s), comma-separated, each as extract --data takes it (default: digits)")
    p.add_argument("--backbone", help="backbone spec(s), comma-separated (default: effnet-lite0)")
    p.add_argument("--weights", metavar="FILE",
                   help="local weights file for the (single) backbone (default: the spec's own weights)")
    p.add_argument("--layers", help="layers, comma-separated (default: pooled)")
    p.add_argument("--heads", help="heads, comma-separated (default: logreg,lgbm,mlp,knn,ncm)")
    p.add_argument("--shots", help="K-shot sizes, comma-separated (default: the full train split)")
    p.add_argument("--seeds", help="seeds for K-shot samples, comma-separated (default: 0)")
    p.add_argument("--cache-dir", metavar="DIR", help=f"cache root (default: {CACHE_RULE})")
    p.add_argument("--results-dir", metavar="DIR", help="where results go (default: benchmarks/results)")
    p.add_argument("--batch-size", type=int, help="images per forward pass (default: 256 on GPU, 64 on CPU)")
    p.add_argument("--workers", type=int, help="decoding processes (default: per device)")
    p.add_argument("--device", help="auto, cpu or cuda[:N] (default: auto)")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"],
                   help="autocast precision of the forward pass (default: auto)")
    p.add_argument("--quiet", action="store_true", help="no progress output (default: off)")
    _add_engine_flags(p, None)
    p.set_defaults(func=cmd_bench)
    return parser


# Python argument names whose flag is not the name with dashes (the rest follow from the parser).
FLAG_ALIASES = {"num_workers": "--workers", "heads": "--head", "head_file": "--head-file"}


def flag_names(parser: argparse.ArgumentParser) -> dict[str, str]:
    """Python argument name -> command-line flag, for every flag of every verb."""
    names = dict(FLAG_ALIASES)
    for action in parser._actions:  # argparse keeps no public list of a parser's actions
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                names.update({k: v for k, v in flag_names(sub).items() if k not in FLAG_ALIASES})
        elif action.option_strings and action.dest not in ("help", "version"):
            names.setdefault(action.dest, max(action.option_strings, key=len))
    return names


def as_flags(message: str, flags: dict[str, str]) -> str:
    """A library error in the CLI's words: ``name='value'`` becomes ``--flag value`` and a bare
    ``snake_case`` argument name becomes its flag (plain words are left alone)."""
    def valued(m: re.Match[str]) -> str:
        flag = flags.get(m.group(1))
        return f"{flag} {m.group(3) or m.group(4) or m.group(5)}" if flag else m.group(0)

    message = re.sub(r"\b([a-z][a-z0-9_]*)=('([^']*)'|\"([^\"]*)\"|([^\s,;)']+))", valued, message)
    return re.sub(r"(?<![-\w])([a-z]+(?:_[a-z]+)+)\b(?!=)", lambda m: flags.get(m.group(1), m.group(1)), message)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "quiet", False):
        show_progress()
    try:
        return int(args.func(args) or 0)
    except EmbedpipeError as e:
        print(f"embedpipe: error: {as_flags(str(e), flag_names(parser))}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("embedpipe: interrupted; finished shards are kept, re-run the same command to resume",
              file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
