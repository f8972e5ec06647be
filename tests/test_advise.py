"""The transfer report: the four-case decision follows from its numbers, and the report runs on a real
tiny cache (CLI and API), with its plot; bench's Markdown carries the same advice."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
from conftest import TINY_TIMM, make_image_folder

from embedpipe import advise, extract
from embedpipe.advise import (
    GAP_DIFFERENT,
    SMALL_PER_CLASS,
    Evidence,
    LayerScore,
    decide,
    evidence_from_rows,
    format_advice,
    sweep_layers,
)
from embedpipe.report import advise_table


def evidence(per_class: float, accs: dict[str, float], entropy: float | None = None, classes: int = 10) -> Evidence:
    sweep = [LayerScore(n, i, 8, None, a) for i, (n, a) in enumerate(accs.items())]
    return Evidence("d", "b", int(per_class * classes), classes, per_class, sweep, entropy)


SIMILAR = {"block2": 0.70, "block3": 0.80, "pooled": 0.90}  # monotone: the final embedding is best
DIFFERENT = {"block2": 0.70, "block3": 0.85, "block4": 0.80, "pooled": 0.60}  # peaks mid-depth


@pytest.mark.parametrize(
    "per_class, classes, accs, size, similarity, head, layer, blocks",
    [
        (20, 10, SIMILAR, "small", "similar", "logreg", "pooled", 0),
        (20, 10, DIFFERENT, "small", "different", "multilayer", "block2,block3,block4,pooled", 0),
        # few per class but FINETUNE_MIN_TRAIN in all (glyphs: 6 x 1500): fine-tune from below the peak
        (6, 1500, DIFFERENT, "small", "different", "finetune", "block2:map", 2),
        (20, 1500, SIMILAR, "small", "similar", "logreg", "pooled", 0),
        (5000, 10, SIMILAR, "large", "similar", "finetune", "block3:map", 1),
        (5000, 10, DIFFERENT, "large", "different", "finetune", "block2:map", 2),
    ],
)
def test_four_cases_follow_from_the_numbers(per_class: float, classes: int, accs: dict[str, float], size: str,
                                            similarity: str, head: str, layer: str, blocks: int) -> None:
    d = decide(evidence(per_class, accs, classes=classes))
    assert (d["size"], d["similarity"]) == (size, similarity)
    assert d["recommendation"]["head"] == head and d["recommendation"]["layer"] == layer
    assert d["recommendation"]["finetune_blocks"] == blocks
    if size == "small" and head == "finetune":  # the frozen head stays on offer as the cheaper choice
        assert d["recommendation"]["frozen_alternative"] == ",".join(accs)
    assert d["peak_layer"] == max(accs, key=accs.__getitem__)
    assert d["gap"] == pytest.approx(max(v for k, v in accs.items() if k != "pooled") - accs["pooled"])


def test_thresholds_are_the_boundaries() -> None:
    at = {"block3": 0.80 + GAP_DIFFERENT, "pooled": 0.80}
    below = {"block3": 0.80 + GAP_DIFFERENT / 2, "pooled": 0.80}
    assert decide(evidence(10, at))["similarity"] == "different"
    assert decide(evidence(10, below))["similarity"] == "similar"
    assert decide(evidence(SMALL_PER_CLASS, below))["size"] == "large"
    assert decide(evidence(SMALL_PER_CLASS - 1, below))["size"] == "small"
    # with pooled alone, the source classifier's entropy decides
    assert decide(evidence(10, {"pooled": 0.8}, entropy=0.9))["similarity"] == "different"
    assert decide(evidence(10, {"pooled": 0.8}, entropy=0.1))["similarity"] == "similar"


def test_sweep_order_is_by_depth() -> None:
    assert sweep_layers(["pooled", "block4", "logits", "block10", "block2:grid2", "block2", "block3:map"]) == \
        ["block2:grid2", "block2", "block4", "block10", "pooled"]  # a grid is its block's depth; maps are not swept


def test_bench_rows_give_the_same_advice() -> None:
    rows = [{"status": "ok", "dataset": "d", "backbone": "b", "shots": "", "head": h, "layer": n,
             "val_acc": str(a - (0.05 if h == "knn" else 0)), "n_train": "200", "classes": "10"}
            for n, a in DIFFERENT.items() for h in ("logreg", "knn")]
    ev = evidence_from_rows(rows, "d", "b")
    assert ev is not None and ev.per_class == 20 and [s.layer for s in ev.sweep] == list(DIFFERENT)
    assert decide(ev)["recommendation"] == decide(evidence(20, DIFFERENT))["recommendation"]
    table = advise_table(rows)
    assert "small & different" in table and "multilayer on block2,block3,block4,pooled" in table


def test_advise_runs_on_a_cache_and_its_verdict_follows_from_its_table(tmp_path: Path, tiny_timm_weights: str) -> None:
    data = make_image_folder(tmp_path / "shapes", classes=3, per_class=12)
    cache = extract(str(data), TINY_TIMM, weights=tiny_timm_weights, cache_dir=tmp_path / "c",
                    layers=("pooled", "block1", "block2", "logits"), precision="fp32", num_workers=0, progress=False)
    report = advise(cache, out=tmp_path / "a.png")
    assert Path(report["plot"]).stat().st_size > 1000
    assert [s["layer"] for s in report["sweep"]] == ["block1", "block2", "pooled"]
    assert all(0 <= s["knn_val"] <= 1 and 0 <= s["logreg_val"] <= 1 for s in report["sweep"])
    assert 0 <= report["entropy"] <= 1 and report["size"] == "small" and report["per_class"] == pytest.approx(8)
    again = Evidence(report["dataset"], report["backbone"], report["n_train"], report["n_classes"],
                     report["per_class"], [LayerScore(**s) for s in report["sweep"]], report["entropy"])
    assert decide(again)["recommendation"] == report["recommendation"]
    proc = subprocess.run([sys.executable, "-m", "embedpipe", "advise", "--cache", str(cache.path), "--json",
                           "--out", str(tmp_path / "b.png")], capture_output=True, text=True, check=True)
    printed = json.loads(proc.stdout)
    assert printed["recommendation"] == report["recommendation"]
    assert [s["depth"] for s in printed["sweep"]] == [1, 2, None]  # pooled: after every block, no sentinel
    assert all(round(s["knn_val"], 4) == s["knn_val"] for s in printed["sweep"])  # accuracies to 4 decimals
    text = subprocess.run([sys.executable, "-m", "embedpipe", "advise", "--cache", str(cache.path), "--no-plot"],
                          capture_output=True, text=True, check=True).stdout
    assert "recommendation: --head" in text and "| block1" in text and "case: small &" in text


def test_a_recommendation_on_few_validation_images_says_what_it_rests_on() -> None:
    few = Evidence("d", "b", 30, 3, 10.0, [LayerScore(n, i, 8, None, a) for i, (n, a) in enumerate(SIMILAR.items())],
                   val_rows=17, val_source="val split")
    d = decide(few)
    assert d["rests_on"] is not None and "rests on 17 validation images" in d["rests_on"] and "±" in d["rests_on"]
    many = Evidence("d", "b", 3000, 3, 1000.0, few.sweep, val_rows=600)
    assert decide(many)["rests_on"] is None  # enough images: nothing to add
    text = format_advice({**asdict(few), **d, "cache": "c"})
    assert "caution: the recommendation rests on 17 validation images" in text
