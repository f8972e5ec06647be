"""embedpipe bench on tiny inputs: tidy CSV, resume, a failing cell, the Markdown table and plots."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from conftest import TINY_TIMM, make_image_folder

from embedpipe import EmbedpipeError
from embedpipe.bench import COLUMNS, BenchConfig, run_bench
from embedpipe.cli import main


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
    for r in ok:
        assert 0 <= float(r["test_acc"]) <= 1 and float(r["fit_s"]) >= 0 and r["classes"] == "3"
        assert r["date"] and r["machine"] and "torch" in r["versions"]
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


def test_clip_probe_reproduction_exits_cleanly_offline() -> None:
    """The CLIP linear-probe config needs internet; here there is none, so it says so and exits 0."""
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "clip_linear_probe.py"
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    if "Nothing was run" not in proc.stdout:
        pytest.skip("this machine is online: the reproduction ran for real")
    assert "needs internet" in proc.stdout
    config = BenchConfig.from_toml(script.with_suffix(".toml"))
    assert config.datasets == ("torchvision:CIFAR10", "torchvision:CIFAR100")
    assert config.backbones == ("open_clip:ViT-B-32/openai",) and len(config.head_params["logreg"]["Cs"]) >= 8
