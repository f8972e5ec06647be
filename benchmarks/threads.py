"""Small fits on a busy machine: the heads' thread rule (embedpipe/core/threads.py) against torch's
default threads, on an idle machine and with every core kept busy by another process, in one run.

    .venv/bin/python benchmarks/threads.py    # about 3 minutes on 2 cores

Writes benchmarks/results/threads.csv and threads.md. Each problem runs in rounds of an idle spell
then a busy one, each setting fitted ``reps`` times per spell; the table shows the median seconds.
"busy" starts one ``while True: pass`` process per core for the spell and ends them after it. "rule"
is the heads as they ship (threads sized to the work); "default" runs every fit with torch's default
thread count (all physical cores), as heads did before the rule. The machine's other processes count
too: each row records the 1-minute load average, and the "python loop" row times a fixed
single-threaded loop: its busy/idle ratio is what the scheduler gives one thread, the floor for any fit.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

TARGET = 3.0  # busy / idle for logreg on 100 x 1280 x 7 with the rule


def problem(n: int, d: int, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n rows of d features in k classes: class means plus noise (the rows' values do not change the
    cost of a fit much; the sizes do)."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % k
    X = rng.normal(size=(n, d)) + 0.5 * rng.normal(size=(k, d))[y]
    return X.astype(np.float32), y


@contextmanager
def busy_cores(on: bool) -> Iterator[None]:
    """One spinning Python process per core while inside (none when ``on`` is False); ended after."""
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 1)] if on else []
    try:
        time.sleep(0.5 if on else 0)  # let them start spinning
        yield
    finally:
        for h in hogs:
            h.kill()
        for h in hogs:
            h.wait()


@contextmanager
def thread_rule(on: bool) -> Iterator[None]:
    """The heads' rule as shipped, or (off) every fit at torch's default threads: a work threshold of
    ~0 makes ``threads_for`` return its maximum."""
    from embedpipe.core import threads

    saved = threads.WORK_PER_THREAD
    threads.WORK_PER_THREAD = saved if on else 1e-30
    try:
        yield
    finally:
        threads.WORK_PER_THREAD = saved


def python_loop() -> None:
    total = 0
    for i in range(2_000_000):
        total += i


def seconds(fn: Callable[[], Any], reps: int) -> list[float]:
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def cases() -> list[dict[str, Any]]:
    from embedpipe import create_head

    def fit(head: str, n: int, d: int, k: int, **params: Any) -> Callable[[], Any]:
        X, y = problem(n, d, k)
        return lambda: create_head(head, **params).fit(X, y)

    out = [
        {"problem": "python loop (one thread)", "head": "-", "n": 0, "d": 0, "k": 0, "rounds": 5, "reps": 3,
         "fn": python_loop},
        {"problem": "logreg 100 x 1280 x 7", "head": "logreg", "n": 100, "d": 1280, "k": 7, "rounds": 5, "reps": 3},
        {"problem": "lgbm 100 x 1280 x 7", "head": "lgbm", "n": 100, "d": 1280, "k": 7, "rounds": 3, "reps": 1},
        {"problem": "logreg 1000 x 1280 x 100", "head": "logreg", "n": 1000, "d": 1280, "k": 100, "rounds": 2,
         "reps": 1},
    ]
    for case in out:
        if "fn" not in case:
            case["fn"] = fit(case["head"], case["n"], case["d"], case["k"], **case.get("params", {}))
    return out


def measure() -> list[dict[str, Any]]:
    """Each case in ``rounds`` rounds of idle then busy, every setting ``reps`` times in each: the
    machine's other load drifts, and alternating exposes every setting to the same drift."""
    import torch

    from embedpipe.core.threads import threads_for, user_setting

    setting = user_setting()
    if setting:
        raise SystemExit(f"benchmarks/threads.py measures the default thread settings; unset {setting}")
    rows = []
    for case in cases():
        case["fn"]()  # warm-up: imports, first allocations
        settings = (True,) if case["head"] == "-" else (True, False)  # the loop has no threads to choose
        times: dict[tuple[bool, bool], list[float]] = defaultdict(list)
        loads: dict[bool, list[float]] = defaultdict(list)
        threads: dict[bool, int] = {}
        for _ in range(case["rounds"]):
            for busy in (False, True):
                with busy_cores(busy):
                    loads[busy].append(os.getloadavg()[0])
                    for rule in settings:
                        with thread_rule(rule):
                            times[busy, rule] += seconds(case["fn"], case["reps"])
                            work = float(case["n"]) * case["d"] * case["k"]
                            threads[rule] = 1 if case["head"] == "-" else threads_for(work) if rule else torch.get_num_threads()
        for busy in (False, True):
            for rule in settings:
                got = times[busy, rule]
                rows.append({"problem": case["problem"], "head": case["head"], "n": case["n"], "d": case["d"],
                             "k": case["k"], "state": "busy" if busy else "idle", "threads": threads[rule],
                             "setting": "rule" if rule else "default", "fits": len(got),
                             "median_s": round(statistics.median(got), 4), "min_s": round(min(got), 4),
                             "load_1m": round(statistics.mean(loads[busy]), 2)})
                print(rows[-1], flush=True)
    return rows


def summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (problem, setting): idle and busy medians and their ratio."""
    out = []
    for key in dict.fromkeys((r["problem"], r["setting"]) for r in rows):
        pair = {r["state"]: r for r in rows if (r["problem"], r["setting"]) == key}
        idle, busy = pair["idle"], pair["busy"]
        ratio = busy["median_s"] / idle["median_s"]
        out.append({"problem": key[0], "setting": key[1] if idle["head"] != "-" else "-",
                    "threads": idle["threads"], "idle_s": idle["median_s"], "busy_s": busy["median_s"],
                    "busy/idle": f"{ratio:.1f}x", "load idle / busy": f"{idle['load_1m']:.1f} / {busy['load_1m']:.1f}"})
    return out


def main() -> None:
    import torch
    from _common import RESULTS, environment, write_results

    from embedpipe.table import format_table

    env = environment()
    rows = [{**r, **env} for r in measure()]
    write_results("threads", rows, ["problem", "setting", "state", "threads", "median_s", "min_s", "load_1m"])
    table = summary(rows)
    small = next(s for s in table if s["problem"] == "logreg 100 x 1280 x 7" and s["setting"] == "rule")
    ratio = small["busy_s"] / small["idle_s"]
    md = RESULTS / "threads.md"
    md.write_text("\n".join([
        "# Threads sized to the work: idle vs busy", "",
        f"{env['machine']}; {env['date']}; torch {torch.__version__}. Median seconds of the "
        "`fits`, taken in rounds of idle then busy; busy = one spinning process per core; load = the "
        "1-minute load average at the start of each idle or busy spell, averaged (the busy processes "
        "add one per core once they have run a while). The python loop's busy/idle is what the "
        "scheduler gives one thread: the floor for any fit.", "",
        format_table(table), "",
        f"logreg 100 x 1280 x 7 with the rule: busy {ratio:.1f}x idle (target <= {TARGET:g}x: "
        f"{'met' if ratio <= TARGET else 'not met'}).", "",
        "All rows:", "",
        format_table(rows, ["problem", "setting", "state", "threads", "fits", "median_s", "min_s", "load_1m"]),
    ]) + "\n")
    print(md.read_text())


if __name__ == "__main__":
    main()
