"""Rewrite latency of the ThanoSQL preprocessor, per statement.

Times ``rewrite_for_wire`` (what the proxy calls for every Query/Parse
message) on plain SQL, which must take the cheap path, and on each ThanoSQL
statement. Each call is timed on its own with ``time.perf_counter_ns``, the
garbage collector off (as timeit does); the timer's own cost (median of empty
timings) is subtracted. Prints a table and writes
bench/results/rewrite_latency.json. Medians are the figure to quote: p99 shows
whatever else the machine was doing.

    .venv/bin/python bench/rewrite_latency.py [--iterations N] [--out PATH]
"""

from __future__ import annotations

import gc
import platform
import statistics
import time

import common
import pglast

from thanosql_pg.preprocessor import rewrite_for_wire

STATEMENTS: dict[str, str] = {
    "plain: pgbench SELECT (fast path)": "SELECT abalance FROM pgbench_accounts WHERE aid = $1",
    "plain: pgbench UPDATE (fast path)": (
        "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2"
    ),
    "plain: mentions ML words (regex)": (
        "SELECT model, note FROM runs WHERE note <> 'PREDICT USING m AS SELECT 1'"
    ),
    "plain: '(predict' (scanned)": "SELECT count(predict), max(fit) FROM runs WHERE list = $1",
    "LIST MODEL": "LIST MODEL",
    "DESCRIBE MODEL": "DESCRIBE MODEL my_product_classifier",
    "DROP MODEL IF EXISTS": "DROP MODEL IF EXISTS my_product_classifier",
    "BUILD MODEL": (
        "BUILD MODEL my_product_classifier\nUSING ConvNeXt_Tiny\nOPTIONS (\n  image_col='image_path',\n"
        "  label_col='div_l',\n  epochs=1,\n  overwrite=True\n  )\nAS\nSELECT *\nFROM product_image_train"
    ),
    "FIT MODEL": (
        "FIT MODEL my_model_v2 USING my_product_classifier OPTIONS ((image_col='image_path'), "
        "(label_col='div_l'), (max_epochs=2)) AS SELECT * FROM product_image_train WHERE added > '2024-01-01'"
    ),
    "PREDICT": (
        "PREDICT USING my_product_classifier\nOPTIONS (\n    image_col='image_path'\n    )\nAS\n"
        "SELECT *\nFROM product_image_test"
    ),
    "PREDICT table_name": (
        "PREDICT USING my_speech_recognition_model OPTIONS (audio_col='audio_path', "
        "result_col='predict_result', table_name='librispeech_test') AS SELECT * FROM librispeech_test"
    ),
    "PREDICT nested in SELECT": (
        "SELECT p.image_path, p.predict_result FROM (PREDICT USING my_product_classifier "
        "OPTIONS (image_col='image_path') AS SELECT * FROM product_image_test) AS p "
        "WHERE p.predict_result <> p.div_l ORDER BY 1"
    ),
    "EVALUATE": (
        "EVALUATE USING my_product_classifier OPTIONS (image_col='image_path', label_col='div_l') "
        "AS SELECT * FROM product_image_test"
    ),
    "CONVERT": (
        "CONVERT USING my_image_search_model OPTIONS (image_col='image_path', result_col='convert_result') "
        "AS SELECT * FROM mnist_test"
    ),
    "SEARCH IMAGE": (
        "SEARCH IMAGE USING my_image_search_model OPTIONS (search_by='image', "
        "search_input='thanosql-dataset/mnist_data/test/923.jpg', emb_col='convert_result', "
        "result_col='search_result') AS SELECT * FROM mnist_test"
    ),
}


def timer_overhead_ns(n: int = 20000) -> int:
    clock = time.perf_counter_ns
    samples = []
    for _ in range(n):
        t0 = clock()
        samples.append(clock() - t0)
    return int(statistics.median(samples))


def measure(sql: str, iterations: int, overhead: int) -> dict[str, float]:
    clock = time.perf_counter_ns
    for _ in range(min(200, iterations)):  # warm up
        rewrite_for_wire(sql)
    samples = []
    gc.collect()
    gc.disable()  # as timeit does: collector pauses are not the rewrite's cost
    try:
        for _ in range(iterations):
            t0 = clock()
            rewrite_for_wire(sql)
            samples.append(clock() - t0 - overhead)
    finally:
        gc.enable()
    samples.sort()
    return {
        "iterations": iterations,
        "median_us": statistics.median(samples) / 1000,
        "p99_us": samples[min(len(samples) - 1, int(len(samples) * 0.99))] / 1000,
        "min_us": samples[0] / 1000,
    }


def main() -> int:
    ap = common.parser(__doc__.splitlines()[0], "rewrite_latency")
    ap.add_argument("--iterations", type=int, default=5000, help="timed calls per ThanoSQL statement")
    ap.add_argument(
        "--plain-iterations", type=int, default=100000, help="timed calls per plain SQL statement"
    )
    args = ap.parse_args()

    for name, sql in STATEMENTS.items():  # every statement must rewrite cleanly
        out = rewrite_for_wire(sql)
        if name.startswith("plain"):
            assert out is None, name
        else:
            assert out is not None and "raise_error" not in out, (name, out)

    overhead = timer_overhead_ns()
    results: dict[str, dict[str, float]] = {}
    print(f"{'statement':<36} {'median µs':>10} {'p99 µs':>10} {'iterations':>11}")
    for name, sql in STATEMENTS.items():
        n = args.plain_iterations if name.startswith("plain") else args.iterations
        r = measure(sql, n, overhead)
        results[name] = r
        print(f"{name:<36} {r['median_us']:>10.2f} {r['p99_us']:>10.2f} {n:>11}")

    report = {
        "what": "thanosql_pg.preprocessor.rewrite_for_wire latency per call",
        "timer_overhead_ns_subtracted": overhead,
        "python": platform.python_version(),
        "pglast": pglast.__version__,
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "results": results,
    }
    common.write_report(args.out, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
