"""embedpipe bench on tiny inputs: tidy CSV, resume, a failing cell, the Markdown table and plots."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_TIMM, make_image_folder

from embedpipe import EmbedpipeError, create_head
from embedpipe.bench import COLUMNS, BenchConfig, run_bench
from embedpipe.cli import main
from embedpipe.extract import run_extract
from embedpipe.train import load_splits

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))


@pytest.fixture
def config(tmp_path: Path, tiny_timm_weights: str) -> BenchConfig:
    data = make_image_folder(tmp_path / "shapes", classes=3, per_class=10)
    return BenchConfig.build(
        name="tiny", datasets=[str(data)], backbones=[TINY_TIMM], layers=["pooled", "block3"],
        heads=["logreg", "ncm", "zeroshot"], weights={TINY_TIMM: tiny_timm_weights},
        extract={"num_workers": 0, "precision": "fp32"}, head_params={"logreg": {"Cs": [0.1, 1.0]}},
        cache_dir=str(tmp_path / "cache"), results_dir=str(tmp_path / "results"))


def read(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_bench_rows_failing_cell_and_report(config: BenchConfig, capsys: pytest.CaptureFixture[str]) -> None:
    run_bench(config)
    results = Path(config.results_dir)
    rows = read(results / "tiny.csv")
    assert list(rows[0]) == COLUMNS and len(rows) == 6  # 2 layers x 3 heads
    ok = [r for r in rows if r["status"] == "ok"]
    failed = [r for r in rows if r["status"] == "error"]
    assert {r["head"] for r in ok} == {"logreg", "ncm"} and {r["head"] for r in failed} == {"zeroshot"}
    assert all("needs an open_clip backbone" in r["error"] for r in failed)
    # every number of an ok row is what the same head gives when fitted here by hand on the same cache
    cache, _ = run_extract(config.datasets[0], TINY_TIMM, cache_dir=config.cache_dir, layers=config.layers,
                           weights=config.weights[TINY_TIMM], progress=False, **config.extract)
    for r in ok:
        data = load_splits(cache, r["layer"])
        (Xtr, ytr), (Xv, yv), (Xte, yte) = data["train"], data["val"], data["test"]
        head = create_head(r["head"], **config.head_params.get(r["head"], {})).fit(Xtr, ytr, eval_set=(Xv, yv))
        assert float(r["test_acc"]) == pytest.approx(head.score(Xte, yte), abs=1e-4), r
        assert float(r["test_top5"]) == 1.0 and int(r["n_train"]) == len(ytr) and r["classes"] == "3"
        assert 0 < float(r["fit_s"]) < 60 and float(r["extract_img_s"]) > 0
        versions = json.loads(r["versions"])  # the resolved versions, as installed
        assert versions["torch"] == torch.__version__ and versions["numpy"] == np.__version__
        assert r["date"] == datetime.now(UTC).date().isoformat() and r["machine"]
    md = (results / "tiny.md").read_text()
    assert md.startswith("# tiny") and "| dataset" in md and "Test accuracy by layer" in md and "Failed cells" in md
    assert (results / "tiny-accuracy.png").stat().st_size > 1000 and (results / "tiny-fit-time.png").is_file()
    err = capsys.readouterr().err
    assert "[bench 1/6]" in err and "FAILED: head zeroshot: zeroshot needs an open_clip backbone" in err


def test_bench_resumes_skipping_finished_cells(config: BenchConfig, capsys: pytest.CaptureFixture[str]) -> None:
    run_bench(config)
    path = Path(config.results_dir) / "tiny.csv"
    first = read(path)
    capsys.readouterr()
    run_bench(config)  # nothing left but the failing cells, which are retried
    err = capsys.readouterr().err
    assert "2 cells to run (4 done before)" in err
    # drop one finished cell as if the run had been killed before it: only that one runs again
    kept = [r for r in read(path) if not (r["head"] == "ncm" and r["layer"] == "block3")]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(kept)
    run_bench(config.__class__.build(**{**config.__dict__, "heads": ("logreg", "ncm")}))
    assert "1 cells to run (3 done before)" in capsys.readouterr().err
    again = {(r["layer"], r["head"]): r for r in read(path)}
    before = {(r["layer"], r["head"]): r for r in first}
    assert again[("pooled", "logreg")]["fit_s"] == before[("pooled", "logreg")]["fit_s"]  # not re-run
    assert again[("block3", "ncm")]["status"] == "ok"


def test_bench_few_shot_and_toml_via_cli(tmp_path: Path, tiny_timm_weights: str,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    data = make_image_folder(tmp_path / "shapes", classes=3, per_class=10)
    toml = tmp_path / "fs.toml"
    toml.write_text(f"""
datasets = ["{data}"]
backbones = ["{TINY_TIMM}"]
heads = ["ncm", "knn"]
shots = [2]
seeds = [0, 1]
cache_dir = "{tmp_path / 'cache'}"
results_dir = "{tmp_path / 'results'}"
[weights]
"{TINY_TIMM}" = "{tiny_timm_weights}"
[extract]
num_workers = 0
""")
    assert main(["bench", "--config", str(toml), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "± " in out and "| ncm" in out  # mean ± std over the two seeds
    rows = read(tmp_path / "results" / "fs.csv")
    assert len(rows) == 4 and {r["seed"] for r in rows} == {"0", "1"} and {r["n_train"] for r in rows} == {"6"}
    bad = tmp_path / "bad.toml"
    bad.write_text('datasets = ["digits"]\ncolour = "blue"\n')
    assert main(["bench", "--config", str(bad)]) == 1
    assert "unknown keys ['colour']" in capsys.readouterr().err
    with pytest.raises(EmbedpipeError, match="unknown head"):
        BenchConfig.build(heads=["logreg", "nope"])
    one = BenchConfig.build(datasets="digits", heads="logreg", exclude={"digits": "knn"})
    assert one.datasets == ("digits",) and one.heads == ("logreg",) and one.exclude == {"digits": ("knn",)}


def test_changed_head_settings_rerun_the_cell(config: BenchConfig, capsys: pytest.CaptureFixture[str]) -> None:
    run_bench(config)
    capsys.readouterr()
    changed = BenchConfig.build(**{**config.__dict__, "heads": ("logreg",), "head_params": {"logreg": {"Cs": [1.0]}}})
    run_bench(changed)
    assert "2 cells to run (0 done before)" in capsys.readouterr().err


def test_clip_probe_reproduction_exits_cleanly_offline(tmp_path: Path) -> None:
    """The CLIP linear-probe config needs internet; here there is none, so it says so and exits 0.
    Online it would start a real CIFAR run (hours), so the test skips; the script runs from a copy in
    tmp_path either way, so that nothing is written into the repository's benchmarks/results/."""
    import clip_linear_probe

    if clip_linear_probe.online(timeout=1.0) is None:
        pytest.skip("this machine is online: the reproduction is a benchmark, run it by hand")
    for name in ("clip_linear_probe.py", "clip_linear_probe.toml"):
        shutil.copy(BENCHMARKS / name, tmp_path / name)
    before = sorted((BENCHMARKS / "results").iterdir())
    proc = subprocess.run([sys.executable, str(tmp_path / "clip_linear_probe.py")], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "needs internet" in proc.stdout and "Nothing was run" in proc.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip_linear_probe.py", "clip_linear_probe.toml"]
    assert sorted((BENCHMARKS / "results").iterdir()) == before
    config = BenchConfig.from_toml(BENCHMARKS / "clip_linear_probe.toml")
    assert config.datasets == ("torchvision:CIFAR10", "torchvision:CIFAR100")
    assert config.backbones == ("open_clip:ViT-B-32/openai",) and len(config.head_params["logreg"]["Cs"]) >= 8


def test_solvers_marks_what_logreg_really_does(monkeypatch: pytest.MonkeyPatch) -> None:
    """benchmarks/solvers.py derives "(used)" by running the head's solver; the committed table agrees."""
    import solvers

    from embedpipe.heads import logreg

    assert not solvers.logreg_uses_autograd() and solvers.logreg_dtype() == torch.float32

    def with_autograd(Z, y, C, W, b, max_iter, tol, basis, check_every=4, half=False):  # type: ignore[no-untyped-def]
        W = W.clone().requires_grad_(True)  # the control: a solver whose gradient autograd computes
        (torch.nn.functional.cross_entropy(Z @ W + b, y) + (W * W).sum() / C).backward()
        return W.detach(), b, 1

    monkeypatch.setattr(logreg, "lbfgs_logreg_pre", with_autograd)
    assert solvers.logreg_uses_autograd()
    table = (BENCHMARKS / "results" / "solvers.md").read_text()
    cells = [c.strip() for line in table.splitlines() for c in line.split("|")]  # widths vary by table
    assert "autograd loss+grad" in cells and "hand-written loss+grad (used)" in cells


def test_run_measured_counts_the_whole_process_tree() -> None:
    """Two children holding 150 MB each: the tree's peak counts both, one process alone cannot."""
    from _common import run_measured

    child = "import time; b = b'x' * (150 << 20); time.sleep(1.0)"
    code = (f"import subprocess, sys\nkids = [subprocess.Popen([sys.executable, '-c', {child!r}]) for _ in range(2)]\n"
            "print('ok'); [k.wait() for k in kids]")
    out, _, mem = run_measured([sys.executable, "-c", code], timeout=60)
    assert out.strip() == "ok" and mem["peak_processes"] == 3
    assert 150 <= mem["largest_process_mb"] < 250  # one child alone
    assert mem["peak_tree_rss_mb"] >= 300 and mem["peak_tree_pss_mb"] >= 300
    with pytest.raises(subprocess.CalledProcessError):
        run_measured([sys.executable, "-c", "raise SystemExit(3)"])


def test_benchmark_environment_records_resolved_and_pinned_versions() -> None:
    from importlib import metadata

    from _common import environment

    env = environment()
    versions = json.loads(env["versions"])
    for dist in ("torch", "torchvision", "lightgbm", "scikit-learn", "pillow", "numpy"):
        assert versions[dist] == metadata.version(dist), dist
    assert env["pinned"] == "yes", env["pinned"]  # this environment is the one constraints.txt pins


def test_pareto_front_ties_single_and_missing() -> None:
    from embedpipe.report import pareto_front

    assert pareto_front([]) == []
    assert pareto_front([(12.5, 0.4)]) == [True]  # a single head is its own frontier
    # slower and less accurate; as fast but less accurate; as accurate but slower: all off it
    assert pareto_front([(1.0, 0.9), (2.0, 0.8), (1.0, 0.85), (3.0, 0.9), (5.0, 0.95)]) == \
        [True, False, False, False, True]
    assert pareto_front([(1.0, 0.9), (1.0, 0.9), (0.5, 0.5)]) == [True, True, True]  # equal points: both on it
    nan = float("nan")  # a missing value: never on it, and it hides no other point
    assert pareto_front([(0.1, nan), (1.0, 0.9), (None, 0.99), (0.0, None), (nan, 1.0)]) == \
        [False, True, False, False, False]


def test_report_marks_the_frontier_per_dataset(tmp_path: Path) -> None:
    """The table's `frontier` column and the list under it, per dataset, from the values the table
    shows; a row without test accuracy is never on it; the plot is drawn."""
    from embedpipe.report import render_markdown, summarize, write_report

    def row(dataset: str, head: str, acc: str, fit: str) -> dict[str, str]:
        return {"dataset": dataset, "backbone": "b", "layer": "pooled", "head": head, "shots": "", "status": "ok",
                "test_acc": acc, "val_acc": acc, "fit_s": fit, "classes": "3", "n_train": "30", "chosen": ""}

    rows = [row("a", "ncm", "0.80", "0.001"), row("a", "logreg", "0.90", "1.0"), row("a", "mlp", "0.90", "2.0"),
            row("a", "lgbm", "0.85", "3.0"), row("a", "knn", "0.9001", "1.0"), row("a", "none", "", "0.0001"),
            row("b", "logreg", "0.5", "9.0")]
    marked = {(s["dataset"], s["head"]): s["frontier"] for s in summarize(rows)}
    # knn's 0.9001 shows as 0.900, as logreg's at the same time: both stay on it; mlp is as accurate, slower
    assert marked == {("a", "ncm"): "yes", ("a", "logreg"): "yes", ("a", "knn"): "yes", ("a", "mlp"): "",
                      ("a", "lgbm"): "", ("a", "none"): "", ("b", "logreg"): "yes"}
    config = BenchConfig(name="front", layers=("pooled",), results_dir=str(tmp_path))
    md = render_markdown(config, rows)
    table = [line.split("|")[1:-1] for line in md.splitlines() if line.startswith("| ")]
    assert table[0][-1].strip() == "frontier"
    assert {(r[0].strip(), r[3].strip()): r[-1].strip() for r in table[1:8]}[("a", "mlp")] == "-"
    assert "- a / b: ncm on pooled 0.800 in 0.00 s -> " in md and "0.900 in 1.00 s" in md
    assert "- b / b" not in md  # one row is no choice
    paths = write_report(config, rows)
    assert paths["front-fit-time"].stat().st_size > 1000
