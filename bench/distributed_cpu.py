"""Training throughput with ``workers=2`` beside ``workers=1`` on this machine's CPU.

The same BUILD MODEL (ConvNeXt_Tiny from scratch on digit PNGs, ``device='cpu'``) runs
alternately with one process (the backend) and with two gloo workers started by the
backend (which split the statement's cores between them). Reported: images per second of
training (the BUILD's own ``images_per_second`` metric, training steps only) and the
statement's wall seconds, medians of the repeats, and their ratio (workers=2 / workers=1).
On a 2-core machine two workers cannot beat one process by much: each gets one core and
they add an all-reduce of the gradients per step; the figure says what the distribution
costs, and a GPU machine (one worker per GPU) is where it pays. Results:
bench/results/distributed_cpu.json.

    .venv/bin/python bench/distributed_cpu.py [--rows 640] [--epochs 2] [--repeats 3]
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import common

QUERY = "SELECT path, label FROM bench_dist"


def parse_args() -> Any:
    p = common.parser(__doc__, "distributed_cpu")
    common.add_training_args(p, rows=640, epochs=2, input_size=64)
    return p.parse_args()


def main() -> int:
    import psycopg

    args = parse_args()
    dsn, base = common.digits_training(args, "bench_dist")
    base["device"] = "cpu"

    def run(workers: int) -> tuple[float, float]:
        opts = {**base, "workers": workers}
        start = time.perf_counter()
        with psycopg.connect(dsn, autocommit=True) as c:
            metrics = c.execute("SELECT metrics FROM thanosql.build_model('bench_dist_model',"
                                " 'ConvNeXt_Tiny', %s, %s)", (json.dumps(opts), QUERY)).fetchone()[0]
        return float(metrics["images_per_second"]), time.perf_counter() - start

    run(1)  # warm-up: the page cache holds the PNGs and the libraries for both sides
    images: dict[str, list[float]] = {"project": [], "baseline": []}
    seconds: dict[str, list[float]] = {"project": [], "baseline": []}
    for r in range(args.repeats):
        for side, workers in (("project", 2), ("baseline", 1)):
            ips, s = run(workers)
            images[side].append(ips)
            seconds[side].append(s)
        print(f"run {r + 1}: workers=2 {images['project'][-1]:.1f} images/s"
              f" ({seconds['project'][-1]:.1f} s), workers=1 {images['baseline'][-1]:.1f} images/s"
              f" ({seconds['baseline'][-1]:.1f} s)", flush=True)
    with psycopg.connect(dsn, autocommit=True) as conn:
        common.clean_up(conn, "bench_dist_model", "bench_dist")
    med = {side: common.median_of([{"s": v} for v in vs], "s") for side, vs in seconds.items()}
    summary = common.side_by_side(images, "images_per_second",
                                  "workers=2 / workers=1 images/s (2 cores: the cost of distributing)",
                                  workers2_seconds=med["project"], workers1_seconds=med["baseline"])
    common.save(args, "distributed_cpu", {"images_per_second": images, "seconds": seconds}, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
