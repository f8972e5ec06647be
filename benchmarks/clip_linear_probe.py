"""Reproduce the CLIP paper's linear probe for ViT-B/32 on CIFAR-10 and CIFAR-100 with embedpipe.

    .venv/bin/python benchmarks/clip_linear_probe.py

Runs benchmarks/clip_linear_probe.toml through `embedpipe bench` and prints its table next to the
paper's numbers (Table 10: ViT-B/32 linear probe, CIFAR-10 95.1, CIFAR-100 80.5). Needs internet for
the datasets and the weights; without it, it says so and exits 0 having changed nothing.
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
PAPER = {"cifar10": 95.1, "cifar100": 80.5}  # CLIP paper, Table 10, ViT-B/32 linear probe, top-1 %
HOSTS = ("www.cs.toronto.edu", "openaipublic.azureedge.net")  # CIFAR archives; OpenAI's CLIP weights


def online(timeout: float = 3.0) -> str | None:
    """None when every host resolves and accepts a connection; else what failed."""
    for host in HOSTS:
        try:
            socket.create_connection((host, 443), timeout=timeout).close()
        except OSError as e:
            return f"{host}: {e}"
    return None


def main() -> int:
    problem = online()
    if problem:
        print(f"clip_linear_probe needs internet for CIFAR and the ViT-B-32 weights; none here ({problem}). "
              "Nothing was run.")
        return 0
    from embedpipe.bench import BenchConfig, run_bench
    from embedpipe.report import summarize

    config = BenchConfig.from_toml(HERE / "clip_linear_probe.toml", results_dir=str(HERE / "results"))
    rows = run_bench(config)
    print("| dataset | embedpipe top-1 % | CLIP paper top-1 % |\n|---|---|---|")
    for s in summarize(rows):
        print(f"| {s['dataset']} | {100 * s['_acc']:.1f} | {PAPER.get(s['dataset'], '-')} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
