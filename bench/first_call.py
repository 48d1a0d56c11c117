"""A new session's first PREDICT and SEARCH IMAGE of one row vs its second.

Set-up: a ConvNeXt_Tiny (pretrained=False, input 32) trained one epoch on a
few training digits, with the 360 held-out digits in a table; a SimCLR model
(ResNet-18, input 32) trained one epoch on ``--search-rows`` digits and
CONVERTed into their table (an ``emb`` column with its HNSW index). Digits
are scikit-learn's, as 32x32 PNGs under thanosql.data_dir.

Then ``--sessions`` times, for each statement (PREDICT of one row by id;
SEARCH IMAGE top 10 of one digit image given by path), each in a new
connection through the proxy:

- plain: connect, the first statement, the second (another row): the first
  vs the second is the project vs its baseline, a session that is already
  warm. The backend's VmRSS and RssAnon after the two are recorded;
- staged: connect, then each step timed on its own, so that the first
  call's time can be told apart: ``SELECT thanosql._load()`` (the virtualenv
  on sys.path, the thanosql_pg package), ``import torch``, ``import timm``,
  the algorithm family's module (DO blocks in the backend), then the first
  statement (what is left: the model's catalog row and weights fetched, the
  network built, the inference) and the second.

All of it on two servers side by side, session by session: the embedded cluster as
it runs (without thanosql.preload, unless it was started with --preload) and a second
embedded cluster started by this script with ``thanosql start --preload`` (under
``--preload-home``, stopped at the end): what a server gets with and without the
preload.

Medians over the sessions and the ratio first / second go to
bench/results/first_call.json. Target: the first call <= 1 s.
Minutes in all with the defaults on two cores (mostly the four BUILDs).

    .venv/bin/python bench/first_call.py [--sessions 5] [--train-rows 320] [--search-rows 320]
                                         [--no-preload-cluster]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import common

CLASSIFIER = "bench_first_call_classifier"
EMBEDDER = "bench_first_call_simclr"
TABLE = "bench_first_call_digits"
SEARCH_TABLE = "bench_first_call_search"
TARGET_S = 1.0
SIMCLR = {"image_col": "path", "epochs": 1, "batch_size": 64, "input_size": 32, "overwrite": True}


@dataclass(frozen=True)
class Statement:
    """A statement measured: its ThanoSQL text for the i-th call, and the modules its first call imports."""

    name: str
    sql: Callable[[int], str]
    modules: tuple[str, ...]


def parse_args() -> argparse.Namespace:
    p = common.parser(__doc__, "first_call")
    p.add_argument("--sessions", type=int, default=5, help="new sessions per statement and kind")
    p.add_argument("--train-rows", type=int, default=320, help="training digits of the classifier")
    p.add_argument("--search-rows", type=int, default=320, help="digits the SimCLR model is trained on"
                   " and CONVERTed into the searched table")
    common.add_preload_args(p)
    return p.parse_args()


def set_up(conn: Any, files_dir: str, args: argparse.Namespace) -> list[Statement]:
    """Both models and their tables; returns the two statements, each taking the call's number."""
    from thanosql_pg import datasets
    from thanosql_pg.preprocessor import rewrite

    test = common.digits_classifier(conn, files_dir, CLASSIFIER, TABLE, args.train_rows)
    datasets.load_table(conn, SEARCH_TABLE, common.digit_rows(files_dir, args.search_rows))
    common.build_model(conn, EMBEDDER, "SimCLR", SIMCLR, f"SELECT path FROM {SEARCH_TABLE}")
    conn.execute(rewrite(f"CONVERT USING {EMBEDDER} OPTIONS (image_col='path', result_col='emb')"
                         f" AS SELECT * FROM {SEARCH_TABLE}")).fetchall()
    family = "thanosql_pg.algorithms."

    def predict(i: int) -> str:
        row = test[i % len(test)]["id"]
        return (f"PREDICT USING {CLASSIFIER} OPTIONS (image_col='path')"
                f" AS SELECT id, path FROM {TABLE} WHERE id = {row}")

    def search(i: int) -> str:
        path = test[i % len(test)]["path"]
        return (f"SEARCH IMAGE USING {EMBEDDER} OPTIONS (search_by='image', search_input='{path}',"
                f" emb_col='emb', top_k=10) AS SELECT id, emb FROM {SEARCH_TABLE}")

    return [Statement("predict", predict, ("torch", "timm", family + "image_classification.model")),
            Statement("search_image", search, ("torch", "timm", family + "simclr.model"))]


def import_sql(module: str) -> str:
    """Imports ``module`` in the backend's Python (after _load put the virtualenv on sys.path)."""
    return f"DO LANGUAGE plpython3u $imp$ import importlib; importlib.import_module('{module}') $imp$"


def plain(dsn: str, st: Statement, i: int) -> dict[str, float]:
    """A new session: connect, the first call, the second; and the backend's memory after them."""
    import psycopg

    conn, connect = common.timed(lambda: psycopg.connect(dsn, autocommit=True))
    with conn:
        pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        _, first = common.timed(lambda: conn.execute(st.sql(2 * i)).fetchall())
        _, second = common.timed(lambda: conn.execute(st.sql(2 * i + 1)).fetchall())
        memory = common.backend_memory(pid)
    return {"connect": connect, "first": first, "second": second, "rss_mib": memory["VmRSS"] / 1024,
            "rss_anon_mib": memory["RssAnon"] / 1024, "pss_mib": memory["Pss"] / 1024}


def staged(dsn: str, st: Statement, i: int) -> dict[str, float]:
    """A new session whose first call is preceded by its parts, each timed alone."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        def step(sql: str) -> float:
            return common.timed(lambda: conn.execute(sql))[1]

        steps = {"load": step("SELECT thanosql._load()")}
        for module in st.modules:
            steps["import_" + module.rsplit(".", 1)[-1]] = step(import_sql(module))
        steps["first_after_imports"] = step(st.sql(2 * i))
        steps["second"] = step(st.sql(2 * i + 1))
    return steps


def medians(runs: list[dict[str, float]]) -> dict[str, float]:
    return {k: common.median_of(runs, k) for k in runs[0]}


def summarize(runs: dict[str, dict[str, list[dict[str, float]]]]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for name, kinds in runs.items():
        m = medians(kinds["plain"])
        summary[name] = {"first_seconds": m["first"], "second_seconds": m["second"],
                         "ratio_first_to_second": m["first"] / m["second"], "connect_seconds": m["connect"],
                         "backend_rss_mib": m["rss_mib"], "backend_rss_anon_mib": m["rss_anon_mib"],
                         "backend_pss_mib": m["pss_mib"],
                         "breakdown_seconds": medians(kinds["staged"]),
                         "meets_target": m["first"] <= TARGET_S}
    summary["target"] = f"first call <= {TARGET_S} s"
    return summary


def main() -> int:
    args = parse_args()
    import psycopg

    context = common.run_context()
    servers = {"embedded": common.cluster_status()}
    if args.preload_cluster:
        servers["preload"] = common.start_preload_cluster(args.preload_home)
    statements: dict[str, list[Statement]] = {}
    settings: dict[str, dict[str, str]] = {}
    for label, info in servers.items():
        with psycopg.connect(info["server"], autocommit=True) as conn:
            statements[label] = set_up(conn, info["files_dir"], args)
            settings[label] = {**common.server_settings(conn),
                               "thanosql.preload": conn.execute("SELECT pg_catalog.current_setting("
                                                                "'thanosql.preload', true)").fetchone()[0]}
    runs: dict[str, dict[str, dict[str, list[dict[str, float]]]]] = {
        label: {st.name: {"plain": [], "staged": []} for st in sts} for label, sts in statements.items()}
    # session by session, every server and kind in turn: whatever else the machine does
    # falls on all alike
    for i in range(args.sessions):
        for label, sts in statements.items():
            for st in sts:
                p = plain(servers[label]["proxy"], st, i)
                s = staged(servers[label]["proxy"], st, i)
                runs[label][st.name]["plain"].append(p)
                runs[label][st.name]["staged"].append(s)
                print(f"session {i + 1} {label} {st.name}: first {p['first']:.3f} s, second"
                      f" {p['second']:.3f} s; staged " + ", ".join(f"{k} {v:.3f}" for k, v in s.items()),
                      flush=True)
    for info in servers.values():
        with psycopg.connect(info["server"], autocommit=True) as conn:
            common.clean_up(conn, CLASSIFIER, TABLE)
            common.clean_up(conn, EMBEDDER, SEARCH_TABLE)
    if args.preload_cluster:
        common.stop_cluster(args.preload_home)
    summary = {label: summarize(r) for label, r in runs.items()}
    if "preload" in summary:
        summary["preload_vs_embedded_first_call"] = {
            st: summary["preload"][st]["first_seconds"] / summary["embedded"][st]["first_seconds"]
            for st in ("predict", "search_image")}
    common.save(args, "first_call", runs, summary, machine_info=common.machine(**context),
                run_settings={**common.settings(args, skip=("out", "preload_home")), "through": "proxy",
                              "server_settings": settings})
    return 0


if __name__ == "__main__":
    sys.exit(main())
