"""SEARCH IMAGE latency and recall@10 on many stored vectors: HNSW index vs sequential scan.

Set-up (in its own database, ``thanosql_search_bench``; kept between runs and
reused when it already holds ``--rows`` vectors, see ``--rebuild``):

- a SimCLR model (the default for input 32: the small ResNet; 128-dimensional embeddings) trained
  one epoch on scikit-learn's digits, and CONVERTed: the 1,797 digit
  embeddings are the cluster centres;
- ``--rows`` vectors (default 1,000,000) around those centres: centre plus
  Gaussian noise, L2-normalized, the noise sized so that a vector lies about
  as far from its centre as the centre lies from its nearest other centre
  (clusters that overlap, like real embeddings). Loaded with binary COPY into
  ``vectors (id bigint, emb vector(128))``;
- an HNSW index (``vector_cosine_ops``, pgvector's defaults m=16,
  ef_construction=64), built with ``maintenance_work_mem`` = ``--build-memory``
  and one parallel worker; the build time is reported.

Measured, for ``--queries`` digit images as ``search_input`` (paths):

- ``SEARCH IMAGE ... top_k=10 AS SELECT id, emb FROM vectors``: rewritten by
  the preprocessor as the proxy would and sent straight to the server, the
  model cached in the session. With the index (hnsw.ef_search 40 and 100),
  and with index scans off (exact: a parallel sequential scan with top-N
  sort) for the first ``--exact-queries`` queries, which are also the ground
  truth of recall@10 (the share of the exact top 10 the index returns);
- the query embedding alone (``SELECT thanosql.embed_query(...)``), part of
  every SEARCH's latency.

Latencies are wall-clock per statement at the client (p50, p99). Results go to
bench/results/search_latency.json.

Runtime on two CPU cores with the default 1,000,000 rows: about 2 minutes to
generate and load, 10-30 minutes to build the HNSW index, then about 1 s per
exact query and milliseconds per HNSW query. ``--rows 100000`` takes a few
minutes in all.

    .venv/bin/python bench/search_latency.py [--rows 1000000] [--queries 200] [--exact-queries 30]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import common

DB = "thanosql_search_bench"
REPEATS = 5  # repeated searches (and raw queries) per query: sub-millisecond timings are noisy
MODEL = "bench_search"
DIM = 128


def parse_args() -> argparse.Namespace:
    p = common.parser(__doc__, "search_latency")
    p.add_argument("--rows", type=int, default=1_000_000, help="stored vectors")
    p.add_argument("--queries", type=int, default=200, help="SEARCH IMAGE statements per HNSW setting")
    p.add_argument("--exact-queries", type=int, default=30, help="of those, also run without the index")
    p.add_argument("--build-memory", default="4GB", help="maintenance_work_mem for the HNSW build")
    p.add_argument("--rebuild", action="store_true", help="regenerate the vectors and the index")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


def ensure_database(info: dict[str, Any]) -> str:
    import psycopg

    with psycopg.connect(info["server"], autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [DB]).fetchone():
            conn.execute(f"CREATE DATABASE {DB}")
    dsn = info["server"].rsplit("/", 1)[0] + "/" + DB
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SET client_min_messages = warning")
        conn.execute("CREATE EXTENSION IF NOT EXISTS thanosql CASCADE")
    return dsn


def build_model(conn: Any, files_dir: Path) -> list[dict[str, Any]]:
    """The model and the digits table; returns the digits rows."""
    from thanosql_pg import datasets

    rows = datasets.write_digits(files_dir / "digits")
    datasets.load_table(conn, "digits", rows)
    if not conn.execute("SELECT 1 FROM thanosql.models WHERE name = %s", [MODEL]).fetchone():
        _, seconds = common.timed(lambda: common.build_model(
            conn, MODEL, "SimCLR", {"image_col": "path", "epochs": 1, "batch_size": 64, "input_size": 32,
                                    "learning_rate": 0.001}, "SELECT path FROM digits"))
        print(f"BUILD MODEL {MODEL}: {seconds:.0f} s", flush=True)
    conn.execute("SELECT * FROM thanosql.convert(%s, %s, 'SELECT * FROM digits', 'digits')",
                 [MODEL, json.dumps({"image_col": "path", "result_col": "emb", "create_index": False})])
    return rows


def generate(conn: Any, n: int, seed: int) -> dict[str, Any]:
    """``n`` vectors around the digit embeddings, COPYed in binary; returns how they were made."""
    import numpy as np
    from pgvector.psycopg import register_vector

    register_vector(conn)
    centres = np.stack([np.asarray(r[0].to_numpy() if hasattr(r[0], "to_numpy") else r[0], dtype=np.float32)
                        for r in conn.execute("SELECT emb FROM digits ORDER BY id").fetchall()])
    sims = centres @ centres.T
    np.fill_diagonal(sims, -1)
    nn_dist = float(np.median(1 - sims.max(axis=1)))  # cosine distance to the nearest other centre
    # |noise| = s * sqrt(DIM) gives cos(vector, centre) = 1 / sqrt(1 + DIM s^2) for a unit centre
    s = float(np.sqrt((1 / (1 - nn_dist)) ** 2 - 1) / np.sqrt(DIM))
    rng = np.random.default_rng(seed)
    conn.execute("DROP TABLE IF EXISTS vectors")
    conn.execute(f"CREATE TABLE vectors (id bigint, emb vector({DIM}))")
    start = time.perf_counter()
    chunk = 50_000
    with conn.cursor().copy("COPY vectors (id, emb) FROM STDIN WITH (FORMAT BINARY)") as copy:
        copy.set_types(["int8", "vector"])
        for lo in range(0, n, chunk):
            ids = np.arange(lo, min(n, lo + chunk))
            v = centres[ids % len(centres)] + rng.normal(0, s, (len(ids), DIM)).astype(np.float32)
            v /= np.linalg.norm(v, axis=1, keepdims=True)
            for i, row in zip(ids.tolist(), v, strict=True):
                copy.write_row((i, row))
    load_s = time.perf_counter() - start
    conn.execute("ALTER TABLE vectors ADD PRIMARY KEY (id)")
    conn.execute("VACUUM ANALYZE vectors")
    print(f"loaded {n} vectors in {load_s:.0f} s (noise sigma {s:.4f})", flush=True)
    return {"centres": len(centres), "median_nn_cosine_distance_of_centres": round(nn_dist, 5),
            "noise_sigma_per_dimension": round(s, 5), "load_seconds": round(load_s, 1)}


def build_index(conn: Any, memory: str) -> float:
    conn.execute(f"SET maintenance_work_mem = '{memory}'")
    conn.execute("SET max_parallel_maintenance_workers = 1")  # leader + 1 worker on two cores
    conn.execute("DROP INDEX IF EXISTS vectors_emb_idx")
    _, took = common.timed(
        lambda: conn.execute("CREATE INDEX vectors_emb_idx ON vectors USING hnsw (emb vector_cosine_ops)"))
    conn.execute("RESET maintenance_work_mem")
    print(f"HNSW index built in {took:.0f} s", flush=True)
    return took


def main() -> int:
    args = parse_args()
    import psycopg

    from thanosql_pg.preprocessor import rewrite

    info = common.cluster_status()
    dsn = ensure_database(info)
    setup: dict[str, Any] = {}
    with psycopg.connect(dsn, autocommit=True) as conn:
        digits = build_model(conn, Path(info["files_dir"]))
        # the set-up is kept: its description (a table comment) says how it was made
        saved = None
        if conn.execute("SELECT to_regclass('vectors_emb_idx') IS NOT NULL").fetchone()[0]:
            count, saved = conn.execute("SELECT count(*), obj_description('vectors'::regclass, 'pg_class')"
                                        " FROM vectors").fetchone()
            saved = saved if count == args.rows else None
        if args.rebuild or not saved:
            setup = generate(conn, args.rows, args.seed)
            setup["hnsw_build_seconds"] = round(build_index(conn, args.build_memory), 1)
            setup["hnsw_build_memory"] = args.build_memory
            conn.execute(f"COMMENT ON TABLE vectors IS '{json.dumps(setup)}'")
        else:
            setup = json.loads(saved)
            print(f"reusing {args.rows} vectors and their index (built in {setup['hnsw_build_seconds']} s)")
        setup["table_size"] = conn.execute("SELECT pg_size_pretty(pg_table_size('vectors'))").fetchone()[0]
        setup["index_size"] = conn.execute("SELECT pg_size_pretty(pg_relation_size('vectors_emb_idx'))"
                                           ).fetchone()[0]

        rng = random.Random(args.seed)
        paths = [d["path"] for d in rng.sample(digits, min(args.queries, len(digits)))]

        def search_sql(path: str) -> str:
            return rewrite(f"SEARCH IMAGE USING {MODEL} OPTIONS (search_by='image', search_input='{path}',"
                           " emb_col='emb', top_k=10) AS SELECT id, emb FROM vectors")

        def run(sql: str) -> tuple[float, list[int]]:
            rows, seconds = common.timed(lambda: conn.execute(sql).fetchall())
            return seconds, [r[0] for r in rows]

        embed_sql = "SELECT thanosql.embed_query(%s, %s)"
        opts = {"search_by": "image", "emb_col": "emb"}

        def embed(path: str) -> float:
            params = [MODEL, json.dumps({**opts, "search_input": path})]
            return common.timed(lambda: conn.execute(embed_sql, params).fetchone())[1]

        plan = "\n".join(r[0] for r in conn.execute("EXPLAIN " + search_sql(paths[0])).fetchall())
        assert "Index Scan using vectors_emb_idx" in plan, plan
        embed(paths[0])  # loads the model
        run(search_sql(paths[0]))  # warms the index pages
        raw_sql = "SELECT id, emb FROM vectors ORDER BY emb <=> %s::vector LIMIT 10"
        # Each query in turn through every variant, so that load from other processes on the
        # machine falls on all of them alike. A first search embeds its query: measured with
        # the session's query-embedding cache off; then, with it on, the same search repeated
        # (paging, a dashboard) beside the raw pgvector query with the same vector.
        times: dict[str, list[float]] = {"embed_query_only": [], "seqscan_exact": [],
                                         "hnsw_ef_search_40": [], "hnsw_ef_search_100": [],
                                         "repeated_search_ef_search_40": [], "raw_pgvector_ef_search_40": [],
                                         "repeated_search_ef_search_40_prepared": [],
                                         "raw_pgvector_ef_search_40_prepared": []}
        recalls: dict[str, list[float]] = {"hnsw_ef_search_40": [], "hnsw_ef_search_100": []}
        for i, p in enumerate(paths):
            conn.execute("SET thanosql.query_cache_size = 0")
            times["embed_query_only"].append(embed(p))
            exact = None
            if i < args.exact_queries:
                conn.execute("SET enable_indexscan = off")
                t, exact = run(search_sql(p))
                conn.execute("RESET enable_indexscan")
                times["seqscan_exact"].append(t)
            for ef in (40, 100):
                conn.execute(f"SET hnsw.ef_search = {ef}")
                t, ids = run(search_sql(p))
                times[f"hnsw_ef_search_{ef}"].append(t)
                if exact is not None:
                    recalls[f"hnsw_ef_search_{ef}"].append(len(set(ids) & set(exact)) / 10)
            conn.execute("RESET hnsw.ef_search")
            conn.execute("RESET thanosql.query_cache_size")
            sql = search_sql(p)
            run(sql)  # the first: embeds, and keeps the embedding
            vec = conn.execute(embed_sql, [MODEL, json.dumps({**opts, "search_input": p})]).fetchone()[0]
            # In turn, so that both see the same load; both sent the same way. psycopg prepares a
            # text it has run 5 times: the raw query's one text (the vector is its parameter)
            # would be prepared from the start while each search's text (its input is in it) is
            # parsed and planned anew; so once both as text, and once both prepared.
            for prepared in (False, True):
                suffix = "_prepared" if prepared else ""
                for _ in range(REPEATS):
                    times["repeated_search_ef_search_40" + suffix].append(common.timed(
                        lambda sql=sql, prepared=prepared: conn.execute(sql, prepare=prepared).fetchall())[1])
                    times["raw_pgvector_ef_search_40" + suffix].append(common.timed(
                        lambda vec=vec, prepared=prepared: conn.execute(raw_sql, [vec],
                                                                        prepare=prepared).fetchall())[1])
        results: dict[str, Any] = {k: common.latency(v) for k, v in times.items()}
        for k, v in recalls.items():
            results[k]["recall_at_10"] = round(statistics.fmean(v), 4)
        for k, v in results.items():
            print(f"{k}: {v}", flush=True)
    hnsw = results["hnsw_ef_search_40"]
    summary = {
        "rows": args.rows,
        "hnsw_p50_ms": hnsw["p50_ms"], "hnsw_p99_ms": hnsw["p99_ms"],
        "hnsw_recall_at_10": hnsw["recall_at_10"],
        "seqscan_p50_ms": results["seqscan_exact"]["p50_ms"],
        "seqscan_p99_ms": results["seqscan_exact"]["p99_ms"],
        "speedup_p50": round(results["seqscan_exact"]["p50_ms"] / hnsw["p50_ms"], 1),
        "embed_query_p50_ms": results["embed_query_only"]["p50_ms"],
        "repeated_search_p50_ms": results["repeated_search_ef_search_40"]["p50_ms"],
        "raw_pgvector_p50_ms": results["raw_pgvector_ef_search_40"]["p50_ms"],
        "repeated_vs_raw_ratio": round(results["repeated_search_ef_search_40"]["p50_ms"]
                                       / results["raw_pgvector_ef_search_40"]["p50_ms"], 2),
        "repeated_search_prepared_p50_ms": results["repeated_search_ef_search_40_prepared"]["p50_ms"],
        "raw_pgvector_prepared_p50_ms": results["raw_pgvector_ef_search_40_prepared"]["p50_ms"],
        "repeated_vs_raw_ratio_prepared": round(results["repeated_search_ef_search_40_prepared"]["p50_ms"]
                                                / results["raw_pgvector_ef_search_40_prepared"]["p50_ms"], 2),
        "repeated_target": "<= 2x raw pgvector",
        "hnsw_build_seconds": setup.get("hnsw_build_seconds"),
    }
    report = common.report("search_latency", common.machine(), settings=common.settings(args),
                           setup=setup, results=results, median=summary)
    common.write_report(args.out, report, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
