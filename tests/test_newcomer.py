"""A newcomer's path, through the real command line: extract one's own folder, then train, evaluate
and predict, from two different working folders that share one cache (the default cache root,
``$EMBEDPIPE_CACHE``, with no --cache-dir)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY_TIMM, make_image_folder


def embedpipe(cwd: Path, env: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "embedpipe", *argv], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, (argv, proc.stderr)
    assert "Traceback" not in proc.stderr
    return proc


@pytest.mark.timeout(240)
def test_two_working_folders_share_one_cache(tmp_path: Path, tiny_timm_weights: str) -> None:
    photos = make_image_folder(tmp_path / "photos", classes=3, per_class=8)  # class subfolders, no split
    shared, xdg = tmp_path / "shared-cache", tmp_path / "xdg"
    env = {**os.environ, "EMBEDPIPE_CACHE": str(shared), "XDG_CACHE_HOME": str(xdg)}
    folder_a, folder_b = tmp_path / "A", tmp_path / "B"
    folder_a.mkdir()
    folder_b.mkdir()
    # From A, with relative paths, as typed by hand (the weights file too).
    weights_from_a = os.path.relpath(tiny_timm_weights, folder_a)
    common = ["--backbone", TINY_TIMM, "--workers", "0", "--precision", "fp32"]
    first = embedpipe(folder_a, env, "extract", "--data", "../photos", "--weights", weights_from_a, *common)
    cache = first.stdout.strip()
    assert Path(cache).is_absolute() and Path(cache).is_relative_to(shared) and (Path(cache) / "meta.h5").is_file()
    assert "cache size estimate" in first.stderr
    assert not (folder_a / "cache").exists() and not xdg.exists()  # nothing in the working folder or elsewhere

    # From B, the same folder by another path: the same cache, nothing computed, said in one line.
    again = embedpipe(folder_b, env, "extract", "--data", str(photos), "--weights", tiny_timm_weights, *common)
    assert again.stdout.strip() == cache
    assert "nothing recomputed" in again.stderr and "cache size estimate" not in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1

    trained = json.loads(embedpipe(folder_b, env, "train", "--cache", cache, "--json").stdout)["results"][0]
    head_file = trained["path"]
    assert Path(head_file).is_absolute() and Path(head_file).is_file()
    assert set(trained["chosen"]) == {"C"} and "C: best val accuracy" in trained["selection"]["how"]

    scored = json.loads(embedpipe(folder_b, env, "evaluate", "--head-file", head_file, "--json").stdout)
    assert scored["split"] == "test" and scored["n"] > 0 and 0 <= scored["top1"] <= 1

    image = str(photos / "class2" / "img001.png")
    predicted = embedpipe(folder_b, env, "predict", "--head-file", head_file, image, "--top-k", "2")
    assert predicted.stdout.startswith(f"{image}: ")
    assert not (folder_b / "cache").exists() and not xdg.exists()
