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
    if args.json:
        print(json.dumps(obj, default=str))  # ASCII: non-UTF-8 names come out as \u escapes
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
    _emit(args, {args.what: table}, "\n".join(f"{k:14s} {v}" for k, v in sorted(table.items())))


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
    _emit(args, {**cache.summary(), "stats": vars(stats)}, str(cache.path))


def cmd_info(args: argparse.Namespace) -> None:
    from .cache import (  # start-up: each verb imports only what it runs
        open_cache,
        verify_cache,
        verify_message,
    )

    if args.verify and (problems := verify_cache(args.cache)):
        raise EmbedpipeError(verify_message(args.cache, problems))
    cache = open_cache(args.cache)
    brief = cache.summary()
    if args.verify:
        brief["verified"] = f"all {cache.n_shards} shards read in full; " + (
            "every checksum matches" if cache.checksummed
            else "written without checksums by an older embedpipe, so flipped bytes cannot be detected")
    summary = {**brief, "failed_ids": cache.failed, "meta": cache.meta}
    lines = [f"{k}: {v}" for k, v in brief.items()] + [f"source: {cache.meta.get('source', '?')}"]
    lines += [f"  skipped {i}: {reason}" for i, reason in cache.failed]
    _emit(args, summary, "\n".join(lines))


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
    results = train_heads(args.cache, heads, layer=args.layer, params=parse_params(args.param, heads), out=args.out)
    rows = [r.to_dict() for r in results]
    note = results[0].val_split.get("note") if results else None
    if note:
        print(f"embedpipe: {note}", file=sys.stderr)
    table = format_table(rows, ["head", "layer", "val_acc", "test_acc", "fit_s", "n_train", "n_classes", "path"])
    for r in results:
        if "layer_contributions_" in r.report:
            kept = r.report.get("layer_kept_", {})
            table += f"\n{r.head}: layer contributions (share of weight norm, features kept; kept {r.report['keep_']:.0%}):"
            table += "".join(f"\n  {name:10s} {share:6.1%}  {kept.get(name, 0)} features"
                             for name, share in r.report["layer_contributions_"].items())
    _emit(args, {"results": rows}, table)


def _pm(mean: float | None, std: float | None) -> str:
    return "-" if mean is None else f"{mean:.3f} ± {std:.3f}"


def cmd_advise(args: argparse.Namespace) -> None:
    from .advise import advise, format_advice  # start-up: each verb imports only what it runs

    report = advise(args.cache, out=args.out, plot=not args.no_plot)
    _emit(args, report, format_advice(report))


def cmd_evaluate(args: argparse.Namespace) -> None:
    from .train import evaluate  # start-up: each verb imports only what it runs

    m = evaluate(args.head_file, args.cache, args.split)
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
    from .bench import BenchConfig, run_bench  # start-up: each verb imports only what it runs
    from .report import render_markdown

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
    _emit(args, {"results": rows, "csv": f"{config.results_dir}/{config.name}.csv"}, render_markdown(config, rows))


def _add_extract_flags(p: argparse.ArgumentParser) -> None:
    from .backbones import DEFAULT_BACKBONE  # start-up: --help needs no torch

    p.add_argument("--backbone", default=DEFAULT_BACKBONE,
                   help="backbone spec: effnet-lite0, timm:<name>, open_clip:<arch>[/<tag>] (default %(default)s)")
    p.add_argument("--weights", help="local weights file for the backbone (timm or open_clip checkpoint)")
    p.add_argument("--layers", default="pooled", help="comma-separated layers to store (default pooled)")
    p.add_argument("--cache-dir", default="cache", help="cache root (default ./cache)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N] (default auto)")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                   help="autocast precision of the forward pass (default auto)")
    p.add_argument("--dtype", default="float16", choices=["float16", "float32"], help="stored feature dtype")
    p.add_argument("--batch-size", type=int, default=None, help="images per forward pass (default: 256 on GPU, 64 on CPU)")
    p.add_argument("--workers", type=int, default=None, help="decoding processes (default: per device, see README)")
    p.add_argument("--shard-size", type=int, default=1024, help="rows per shard, the unit of resume (default 1024)")
    p.add_argument("--image-size", type=int, default=None,
                   help="model input side in px for timm convnets (default: the model's own, e.g. 224)")
    p.add_argument("--no-jpeg-draft", dest="jpeg_draft", action="store_false",
                   help="decode large JPEGs at full size (default: reduced DCT scale, never below model size)")
    p.add_argument("--no-gpu-decode", dest="gpu_decode", action="store_false",
                   help="on CUDA, decode every image on the CPU (default: JPEGs on the GPU with nvJPEG)")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the train/val/test split rule")
    p.add_argument("--val-fraction", type=float, default=0.15, help="val share per class when data has no split")
    p.add_argument("--test-fraction", type=float, default=0.15, help="test share per class when data has no split")
    p.add_argument("--signature", default="stat", choices=["stat", "content"],
                   help="what identifies a file in the key: stat (size+mtime, free) or content (sha256 of its "
                        "bytes: catches edits that keep size and mtime; reads every file) (default stat)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary line")
    _add_engine_flags(p, "local")


def _add_engine_flags(p: argparse.ArgumentParser, default: str | None) -> None:
    p.add_argument("--engine", default=default, choices=["local", "ray"],
                   help="where shards are computed: this process, or a Ray cluster (default local)")
    p.add_argument("--ray-address", help="Ray cluster to join (default: start a local Ray instance)")
    p.add_argument("--ray-cpus-per-worker", type=int, metavar="N",
                   help="CPUs per Ray worker (default: one worker per GPU; on CPU-only nodes 1-CPU workers, "
                        "at most 8 per node)")


def build_parser() -> argparse.ArgumentParser:
    from .core.version import __version__  # start-up: --help needs no torch

    parser = argparse.ArgumentParser(prog="embedpipe", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--version", action="version", version=f"embedpipe {__version__}")
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    def verb(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
        return p

    p = verb("list", "list registered backbones, heads or built-in datasets")
    p.add_argument("what", choices=["backbones", "heads", "datasets"])
    p.set_defaults(func=cmd_list)

    p = verb("extract", "embed a dataset once into the HDF5 cache; prints the cache path")
    p.add_argument("--data", required=True, help="image folder, CSV manifest (path,label[,split]) or built-in name")
    _add_extract_flags(p)
    p.set_defaults(func=cmd_extract)

    p = verb("info", "describe a cache: rows per split, layers, skipped images")
    p.add_argument("--cache", required=True, help="cache directory (printed by extract)")
    p.add_argument("--verify", action="store_true",
                   help="read every shard in full and check every checksum (finds flipped bytes)")
    p.set_defaults(func=cmd_info)

    p = verb("train", "fit heads on a cache (train split; val for selection) and report val/test accuracy")
    p.add_argument("--cache", required=True, help="cache directory (printed by extract)")
    p.add_argument("--head", default="logreg", help="head name(s), comma-separated (default logreg)")
    p.add_argument("--layer", default=None,
                   help="cached layer(s) to train on, comma-separated for multilayer (default pooled; "
                        "multilayer: every cached layer)")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="head hyperparameter, repeatable; head.key=value to target one of several heads")
    p.add_argument("--out", help="head file (one head) or folder (several); default <cache>/heads/")
    p.add_argument("--shots", type=int, help="few-shot: K training images per class per seed (heads not saved)")
    p.add_argument("--seeds", default="0,1,2", help="few-shot seeds, comma-separated (default 0,1,2)")
    p.set_defaults(func=cmd_train)

    p = verb("advise", "transfer report: how many layers to keep frozen, from a layer sweep and the data's size")
    p.add_argument("--cache", required=True, help="cache directory (printed by extract)")
    p.add_argument("--out", help="accuracy-by-depth plot (default <cache>/advise.png)")
    p.add_argument("--no-plot", action="store_true", help="skip the plot")
    p.set_defaults(func=cmd_advise)

    p = verb("evaluate", "score a saved head: top-1, top-5, mean per-class recall")
    p.add_argument("--head-file", required=True)
    p.add_argument("--cache", help="cache to score on (default: the one the head was trained on)")
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.set_defaults(func=cmd_evaluate)

    p = verb("predict", "classify image files with a saved head (rebuilds its backbone)")
    p.add_argument("--head-file", required=True)
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--device", default=None, help="override the device recorded in the head file")
    p.set_defaults(func=cmd_predict)

    p = verb("bench", "datasets x backbones x layers x heads (x shots x seeds) -> CSV, Markdown and plots; resumable")
    p.add_argument("--config", help="TOML file with any BenchConfig fields; flags given here override it")
    p.add_argument("--name", help="results name: <results-dir>/<name>.csv/.md/-*.png (default bench)")
    p.add_argument("--data", help="dataset(s), comma-separated (default digits)")
    p.add_argument("--backbone", help="backbone spec(s), comma-separated (default effnet-lite0)")
    p.add_argument("--weights", help="local weights file for the (single) backbone")
    p.add_argument("--layers", help="layers, comma-separated (default pooled)")
    p.add_argument("--heads", help="heads, comma-separated (default logreg,lgbm,mlp,knn,ncm)")
    p.add_argument("--shots", help="K-shot sizes, comma-separated (default: the full train split)")
    p.add_argument("--seeds", help="seeds for K-shot samples, comma-separated (default 0)")
    p.add_argument("--cache-dir", help="cache root (default ./cache)")
    p.add_argument("--results-dir", help="where results go (default benchmarks/results)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--workers", type=int)
    p.add_argument("--device")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"])
    p.add_argument("--quiet", action="store_true", help="no progress output")
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
