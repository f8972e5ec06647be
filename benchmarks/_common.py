"""Shared by the benchmark scripts: machine/library facts, tidy CSV + Markdown output, and the peak
memory of a process tree (a process and all its descendants, e.g. DataLoader workers)."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import threading
import time
import tomllib
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SAMPLE_S = 0.05  # how often the process tree's memory is sampled


def environment() -> dict[str, Any]:
    """Date, machine, device and library versions (embedpipe bench's fields), with ``versions``
    widened to every dependency in pyproject.toml as resolved here, and ``pinned``: "yes" when every
    installed package has its constraints.txt version, else the differences (installed != pinned)."""
    from embedpipe.bench import environment as bench_environment

    env = bench_environment()
    versions = {**json.loads(env["versions"]), **resolved_versions()}
    differ = [f"{name} {have} != {want}" for name, (have, want) in sorted(constraint_differences().items())]
    return {**env, "versions": json.dumps(versions, sort_keys=True), "pinned": "; ".join(differ) or "yes"}


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def resolved_versions() -> dict[str, str]:
    """Installed version of each dependency (and extra) named in pyproject.toml."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [*project["dependencies"], *(r for extra in project.get("optional-dependencies", {}).values() for r in extra)]
    out = {}
    for req in reqs:
        name = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", req)
        if name:
            try:
                out[_normalize(name.group(0))] = metadata.version(name.group(0))
            except metadata.PackageNotFoundError:
                out[_normalize(name.group(0))] = "not installed"
    return out


def constraint_differences() -> dict[str, tuple[str, str]]:
    """name -> (installed, pinned) for installed packages whose version differs from constraints.txt
    (a local label such as +cpu is the same release)."""
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        name, sep, version = line.split("#")[0].strip().partition("==")
        if sep:
            pins[_normalize(name)] = version
    installed = {_normalize(d.metadata["Name"]): d.version for d in metadata.distributions() if d.metadata["Name"]}
    return {n: (installed[n], v) for n, v in pins.items() if n in installed and installed[n].split("+")[0] != v}


def write_results(name: str, rows: list[dict[str, Any]], columns: list[str]) -> tuple[Path, Path]:
    """Write ``results/<name>.csv`` (all fields) and ``results/<name>.md`` (the chosen columns)."""
    from embedpipe.table import format_table

    RESULTS.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = RESULTS / f"{name}.csv", RESULTS / f"{name}.md"
    fields = list(dict.fromkeys(k for r in rows for k in r))
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    md_path.write_text(format_table(rows, columns) + "\n")
    return csv_path, md_path


# -- peak memory of a process tree ----------------------------------------------------------------
# ru_maxrss of RUSAGE_SELF is one process; of RUSAGE_CHILDREN, the largest single reaped child, not
# the sum of workers running together. So the tree is sampled from /proc every SAMPLE_S seconds:
# RSS summed over the tree (counts pages shared by forked workers once per process: an upper bound)
# and PSS summed (shared pages split between the processes sharing them: what the tree really uses).
# A spike shorter than SAMPLE_S can be missed. (wait4's ru_maxrss is no floor: a forked child starts
# with its parent's high-water mark.)


def descendants(pid: int) -> list[int]:
    """pid and every live descendant (from /proc/<pid>/task/<tid>/children)."""
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        try:
            for tid in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{tid}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue  # the process ended while we looked
    return found


def memory_kb(pid: int) -> tuple[int, int]:
    """(RSS, PSS) of one process in kB; (0, 0) when it is gone."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            fields = dict(line.split(":", 1) for line in f if line.startswith(("Rss:", "Pss:")))
        return int(fields["Rss"].split()[0]), int(fields["Pss"].split()[0])
    except (FileNotFoundError, ProcessLookupError, PermissionError, KeyError, ValueError):
        return 0, 0


class TreeMemory:
    """Samples the memory of ``pid`` and its descendants in a background thread while in ``with``.

    >>> with TreeMemory(os.getpid()) as mem: ...
    >>> mem.result()  # peak_tree_rss_mb, peak_tree_pss_mb, peak_processes, largest_process_mb
    """

    def __init__(self, pid: int, interval: float = SAMPLE_S) -> None:
        self.pid, self.interval = pid, interval
        self.peak_rss_kb = self.peak_pss_kb = self.peak_processes = self.largest_kb = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> None:
        pids = descendants(self.pid)
        sizes = [memory_kb(p) for p in pids]
        rss, pss = sum(r for r, _ in sizes), sum(p for _, p in sizes)
        self.largest_kb = max(self.largest_kb, *(r for r, _ in sizes))
        self.peak_rss_kb, self.peak_pss_kb = max(self.peak_rss_kb, rss), max(self.peak_pss_kb, pss)
        self.peak_processes = max(self.peak_processes, len(pids))

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def __enter__(self) -> TreeMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def result(self) -> dict[str, int]:
        return {"peak_tree_rss_mb": round(self.peak_rss_kb / 1024), "peak_tree_pss_mb": round(self.peak_pss_kb / 1024),
                "peak_processes": self.peak_processes, "largest_process_mb": round(self.largest_kb / 1024)}


def run_measured(cmd: list[str], timeout: float | None = None, **popen: Any) -> tuple[str, str, dict[str, int]]:
    """Run ``cmd`` (text output captured), sampling its process tree; raise CalledProcessError when it
    fails. -> (stdout, stderr, TreeMemory.result())."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)
    texts: dict[str, str] = {}

    def drain(name: str, pipe: Any) -> None:  # both pipes drained aside: a chatty child never blocks
        texts[name] = pipe.read()

    readers = [threading.Thread(target=drain, args=(n, p), daemon=True)
               for n, p in (("out", proc.stdout), ("err", proc.stderr))]
    deadline = None if timeout is None else time.monotonic() + timeout
    with TreeMemory(proc.pid) as mem:
        for r in readers:
            r.start()
        while proc.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                proc.kill()
                raise subprocess.TimeoutExpired(cmd, timeout or 0)
            time.sleep(0.01)
    for r in readers:
        r.join()
    stdout, stderr = texts.get("out", ""), texts.get("err", "")
    if proc.returncode:
        raise subprocess.CalledProcessError(proc.returncode, cmd, stdout, stderr)
    return stdout, stderr, mem.result()


def camera_jpeg(seed: int, size: tuple[int, int]) -> bytes:
    """A real photo (scikit-learn's sample images) cropped, scaled to ``size`` with sensor-like noise, q90."""
    import io

    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_sample_images

    rng = np.random.default_rng(seed)
    photo = load_sample_images().images[seed % 2]
    h, w = photo.shape[:2]
    ch, cw = int(h * rng.uniform(0.6, 1.0)), int(w * rng.uniform(0.6, 1.0))
    y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
    img = Image.fromarray(photo[y : y + ch, x : x + cw]).resize(size, Image.Resampling.BICUBIC)
    arr = np.asarray(img, np.float32) + rng.normal(0, 4, (size[1], size[0], 3))
    buf = io.BytesIO()
    Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()
