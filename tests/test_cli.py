"""The CLI end to end: extract -> train -> evaluate -> predict, --json everywhere, one-line errors."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_CLIP, TINY_TIMM, make_image_folder

from embedpipe.cli import build_parser, main


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict:  # type: ignore[type-arg]
    code, out, err = run(capsys, *argv, "--json")
    assert code == 0, err
    return json.loads(out)


def test_cli_end_to_end(tmp_path: Path, tiny_timm_weights: str, capsys: pytest.CaptureFixture[str]) -> None:
    data = make_image_folder(tmp_path / "shapes", classes=3, per_class=12)
    common = ["--backbone", TINY_TIMM, "--weights", tiny_timm_weights, "--cache-dir", str(tmp_path / "c"),
              "--workers", "0", "--precision", "fp32"]
    ext = run_json(capsys, "extract", "--data", str(data), "--layers", "pooled,block3", *common)
    assert ext["rows"] == {"train": 24, "val": 6, "test": 6} and ext["stats"]["embedded"] == 36
    cache = ext["path"]
    code, out, err = run(capsys, "extract", "--data", str(data), "--layers", "pooled,block3", *common)
    assert code == 0 and out.strip() == cache and "nothing recomputed" in err

    trained = run_json(capsys, "train", "--cache", cache, "--head", "logreg,mlp", "--param", "mlp.epochs=5",
                       "--param", "logreg.C=1.0", "--out", str(tmp_path / "heads"))
    by_head = {r["head"]: r for r in trained["results"]}
    assert set(by_head) == {"logreg", "mlp"} and by_head["mlp"]["params"] == {"epochs": 5}
    assert by_head["logreg"]["test_acc"] >= 0.5  # stripes and colours are easy, even for random features
    head_file = by_head["logreg"]["path"]
    assert head_file == str(tmp_path / "heads" / "logreg-pooled.npz")

    code, out, _ = run(capsys, "train", "--cache", cache, "--head", "logreg", "--layer", "block3")
    assert code == 0 and "logreg" in out and "block3" in out and Path(cache, "heads", "logreg-block3.npz").is_file()

    ev = run_json(capsys, "evaluate", "--head-file", head_file)
    assert set(ev) >= {"top1", "top5", "mean_per_class_recall"} and ev["n"] == 6 and ev["top5"] == 1.0
    assert ev["top1"] == pytest.approx(by_head["logreg"]["test_acc"])

    images = sorted(str(p) for p in (data / "class1").glob("*.png"))[:2]
    pred = run_json(capsys, "predict", "--head-file", head_file, *images, "--top-k", "2")
    assert [p["image"] for p in pred["predictions"]] == images
    assert all(len(p["top"]) == 2 and p["top"][0][0] in {"class0", "class1", "class2"} for p in pred["predictions"])
    code, out, _ = run(capsys, "predict", "--head-file", head_file, images[0])
    assert code == 0 and out.startswith(images[0] + ": ")

    info = run_json(capsys, "info", "--cache", cache)
    assert set(info["layers"]) == {"pooled", "block3"} and info["failed"] == 0 and info["classes"] == 3


def test_cli_errors_are_one_line(tmp_path: Path, tiny_timm_weights: str, tiny_clip_weights: str,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    data = make_image_folder(tmp_path / "shapes", classes=2, per_class=6)
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    cache_dir = str(tmp_path / "c")
    cases = [
        (["extract", "--data", str(tmp_path / "missing")], "not found"),
        (["extract", "--data", str(tmp_path / "empty")], "no images"),
        (["extract", "--data", str(data), "--backbone", "resnet50"], "unknown backbone"),
        (["extract", "--data", str(data), "--backbone", TINY_TIMM, "--weights", str(tmp_path / "w.pth")],
         "weights file not found"),
        (["extract", "--data", str(data), "--backbone", TINY_TIMM, "--weights", tiny_timm_weights,
          "--layers", "block99"], "has no layer block99"),
        (["train", "--cache", str(tmp_path)], "not an embedpipe cache"),
        (["evaluate", "--head-file", str(tmp_path / "nope.npz")], "head file not found"),
    ]
    for argv, message in cases:
        code, _, err = run(capsys, *argv, "--cache-dir", cache_dir) if argv[0] == "extract" else run(capsys, *argv)
        assert code == 1, argv
        assert err.count("\n") == 1 and err.startswith("embedpipe: error:") and message in err, (argv, err)
        assert "Traceback" not in err

    timm_cache = run_json(capsys, "extract", "--data", str(data), "--backbone", TINY_TIMM, "--weights",
                          tiny_timm_weights, "--cache-dir", cache_dir, "--workers", "0")["path"]
    clip_cache = run_json(capsys, "extract", "--data", str(data), "--backbone", TINY_CLIP, "--weights",
                          tiny_clip_weights, "--cache-dir", cache_dir, "--workers", "0")["path"]
    code, _, err = run(capsys, "train", "--cache", timm_cache, "--head", "nosuchhead")
    assert code == 1 and "unknown head 'nosuchhead'" in err
    code, _, err = run(capsys, "train", "--cache", timm_cache, "--param", "bogus=1")
    assert code == 1 and "has no parameter bogus" in err
    for argv, message in [
        (["--head", "zeroshot"], "head zeroshot: zeroshot needs an open_clip backbone"),
        (["--param", "C=abc"], "head logreg:"),
        (["--head", "ncm", "--shots", "2", "--seeds", "a,b"], "--seeds takes whole numbers"),
    ]:
        code, _, err = run(capsys, "train", "--cache", timm_cache, *argv)
        assert code == 1 and message in err and err.count("\n") == 1 and "Traceback" not in err, err
    (Path(timm_cache).parent / "broken").mkdir()
    (Path(timm_cache).parent / "broken" / "meta.h5").write_bytes(b"not hdf5")
    code, _, err = run(capsys, "info", "--cache", str(Path(timm_cache).parent / "broken"))
    assert code == 1 and "not a readable embedpipe cache" in err
    head = run_json(capsys, "train", "--cache", timm_cache, "--head", "logreg")["results"][0]["path"]
    code, _, err = run(capsys, "evaluate", "--head-file", head, "--cache", clip_cache)
    assert code == 1 and "cache/head mismatch" in err and err.count("\n") == 1


def test_every_verb_has_help_and_json(capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    verbs = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    assert set(verbs) == {"list", "extract", "info", "train", "advise", "audit", "evaluate", "predict", "bench",
                          "export"}
    for name, sub in verbs.items():
        text = sub.format_help()
        assert "--json" in text, name
    code, out, _ = run(capsys, "list", "heads")
    assert code == 0 and "logreg" in out and "lgbm" in out and "mlp" in out
    assert set(run_json(capsys, "list", "backbones")["backbones"]) == {"effnet-lite0", "timm", "open_clip"}


def test_console_script_runs_in_a_subprocess(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "embedpipe", "list", "datasets", "--json"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and json.loads(proc.stdout) == {"datasets": {"digits": "built-in", "glyphs": "built-in"}}
    bad = subprocess.run([sys.executable, "-m", "embedpipe", "train", "--cache", str(tmp_path)],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and bad.stderr.startswith("embedpipe: error:") and "Traceback" not in bad.stderr


def _actions(parser: argparse.ArgumentParser) -> list[tuple[str, argparse.Action]]:
    verbs = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    return [(name, a) for name, sub in verbs.items() for a in sub._actions if a.dest != "help"]


def test_help_describes_every_argument_and_its_default(capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    for verb, action in _actions(parser):
        where = (verb, action.dest)
        assert action.help and len(action.help) > 10, where
        optional = action.option_strings and not action.required
        assert not optional or "default" in action.help, where  # every optional flag says its default
    verbs = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    texts = {name: sub.format_help() for name, sub in verbs.items()}
    assert "torchvision:CIFAR10" in texts["extract"] and "--val-fraction" in texts["extract"]
    assert "EMBEDPIPE_CACHE" in texts["extract"] and "~/.cache/embedpipe" in texts["extract"]
    assert "list heads -v" in texts["train"] and "--quiet" in texts["extract"]
    assert "image file(s) to classify" in texts["predict"] and "carve" in texts["evaluate"]


def test_list_heads_verbose_lists_each_heads_parameters(capsys: pytest.CaptureFixture[str]) -> None:
    from embedpipe.heads import classifier_class

    heads = run_json(capsys, "list", "heads", "-v")["heads"]
    assert {"logreg", "mlp", "lgbm", "knn", "ncm", "multilayer", "finetune", "zeroshot"} <= set(heads)
    for name, head in heads.items():
        assert [p["name"] for p in head["parameters"]] == sorted(classifier_class(name)().get_params(),
                                                                 key=[p["name"] for p in head["parameters"]].index)
        assert set(classifier_class(name)().get_params()) == {p["name"] for p in head["parameters"]}, name
        assert all(p["description"].endswith(".") for p in head["parameters"]), name
    logreg = {p["name"]: p for p in heads["logreg"]["parameters"]}
    assert logreg["C"]["default"] is None and logreg["C"]["type"] == "float or None"
    assert logreg["Cs"]["default"][0] == pytest.approx(1e-4) and logreg["max_iter"]["default"] == 500
    code, out, _ = run(capsys, "list", "heads", "--verbose")
    assert code == 0 and "\n  C " in out and "Inverse L2 regularisation strength." in out


def _json_strings(value: object) -> list[str]:
    """Strings inside a JSON document that are themselves JSON objects or arrays."""
    if isinstance(value, dict):
        return [s for v in value.values() for s in _json_strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _json_strings(v)]
    if isinstance(value, str) and value[:1] in "{[":
        try:
            json.loads(value)
            return [value]
        except json.JSONDecodeError:
            return []
    return []


def test_a_cache_without_val_reports_chosen_values_and_scores_the_same_carve(
        tmp_path: Path, tiny_timm_weights: str, capsys: pytest.CaptureFixture[str]) -> None:
    data = make_image_folder(tmp_path / "tt", classes=3, per_class=14, splits=True)
    for val in (data / "val").iterdir():  # a folder laid out as train/ and test/ only
        for image in val.iterdir():
            image.rename(data / "train" / val.name / image.name)
    (data / "val").rename(tmp_path / "unused")
    cache = run_json(capsys, "extract", "--data", str(data), "--backbone", TINY_TIMM, "--weights", tiny_timm_weights,
                     "--cache-dir", str(tmp_path / "c"), "--workers", "0", "--precision", "fp32")["path"]
    assert Path(cache).is_absolute()

    result = run_json(capsys, "train", "--cache", cache, "--selection", "holdout")["results"][0]
    assert result["chosen"]["C"] in [1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0, 1e3, 1e4]
    assert result["selection"]["val"] == "15% of train held out per class (seed 0)"
    assert result["selection"]["how"].startswith("C: best val accuracy") and result["selection"]["val_rows"] > 0
    code, out, err = run(capsys, "train", "--cache", cache, "--selection", "holdout")
    assert code == 0 and f"C={result['chosen']['C']:g}" in out and "refit on train + val" in out
    assert "held out 15% of train (seed 0)" in err

    scored = run_json(capsys, "evaluate", "--head-file", result["path"], "--split", "val")
    assert scored["n"] == result["val_split"]["rows"] == result["selection"]["val_rows"]
    assert "val that train carved" in scored["note"]
    assert scored["top1"] == pytest.approx(result["val_acc"], abs=1e-4)  # refit on train + val: both see them

    head = run_json(capsys, "info", "--head-file", result["path"])
    assert head["head"] == "logreg" and head["state"]["C_"] == pytest.approx(result["chosen"]["C"])
    assert head["arrays"]["a/coef_"]["shape"] == [3, head["n_features_in"]] and Path(head["path"]).is_absolute()
    with np.load(result["path"]) as z:  # the documented numpy-only recipe (heads/io.py)
        doc = json.loads(z["__embedpipe__"].tobytes())
        assert z["a/coef_"].shape == (3, doc["n_features_in"])
    assert doc["state"]["C_"] == pytest.approx(result["chosen"]["C"])

    info = run_json(capsys, "info", "--cache", cache)
    assert isinstance(info["meta"]["compute"], dict) and _json_strings(info) == []
    code, out, _ = run(capsys, "info", "--cache", cache)
    assert code == 0 and "{'" not in out and "| train | 30" in out and "| pooled | " in out


def test_json_values_are_plain_and_rounded() -> None:
    from embedpipe.table import json_ready

    noisy = float(np.float32(9 / 17))  # 0.529411792755127
    out = json_ready({"val_acc": noisy, "fit_s": 1.23456789, "C": np.float32(0.1), "sweep": [{"knn_val": noisy}],
                      "val_scores_": {"0.1": noisy}, "images_per_s": 123.456789, "x": np.arange(2), "bad": float("nan"),
                      "path": Path("/a/b")})
    assert out == {"val_acc": 0.5294, "fit_s": 1.235, "C": 0.1, "sweep": [{"knn_val": 0.5294}],
                   "val_scores_": {"0.1": 0.5294}, "images_per_s": 123.457, "x": [0, 1], "bad": None, "path": "/a/b"}


def test_the_cache_root_follows_flag_then_environment_then_xdg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from embedpipe.core.paths import cache_root

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("EMBEDPIPE_CACHE", str(tmp_path / "env"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root("here") == tmp_path / "here"  # a flag wins, made absolute
    assert cache_root() == tmp_path / "env"
    monkeypatch.delenv("EMBEDPIPE_CACHE")
    assert cache_root() == tmp_path / "xdg" / "embedpipe"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_root() == Path.home() / ".cache" / "embedpipe"
