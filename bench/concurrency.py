"""PREDICT throughput and backend memory with 1, 2 and 4 concurrent sessions.

A ConvNeXt_Tiny (pretrained=False, input 32) is trained one epoch on a few
training digits (scikit-learn's, as 32x32 PNGs under thanosql.data_dir; the
demo's split). Then, for each level of ``--levels`` (default 1 2 4):

- that many sessions connect through the proxy (one thread and one
  connection each), find their backend with ``pg_backend_pid()`` and run one
  warm-up PREDICT, so that imports and model loading are not timed;
- once all are warm they start together, and each runs
  ``PREDICT USING m OPTIONS (image_col='path') AS SELECT id, path FROM t`` over
  the 360 held-out digits in a loop for ``--seconds``, fetching every row;
- while they run, each backend's Threads (/proc/<pid>/status) is polled; after
  the loop, each session asks its own backend for torch's thread counts, and
  VmRSS, RssAnon (/proc/<pid>/status) and PSS (/proc/<pid>/smaps_rollup) of
  every backend are read before the sessions disconnect.

The baseline is one session: per level, total rows/s (each session's rows over
its own wall time, summed), rows/s per session, their ratio to the
1-session level, and the sums of the backends' RSS, RssAnon and PSS with their
ratios to one backend's, and the whole server's PSS (postmaster, background
processes and backends: each shared page once). The RSS sum counts pages the backends share (the
libraries; weights, once memory-mapped from one file) in every backend; the
PSS sum counts them once, so sharing shows there. Levels run in turn, ``--repeats`` rounds; medians go to
bench/results/concurrency.json. Targets: 4 sessions reach >= 1.5x
the rows/s of one on 2 cores, no level falls below 1x; 4 sessions using one
model hold < 2x the memory of one. /proc must be readable: run it on the
server's machine as root or as the server's OS user.

All of it on two servers side by side, round by round: the embedded cluster as it
runs, and a second embedded cluster started by this script with ``thanosql start
--preload`` (sessions forked with torch and timm loaded share those pages with the
postmaster: the memory target is met there or not at all).

About 2-3 minutes per round and server with the defaults on two cores (3 x 40 s of
loops plus 7 warm-ups).

    .venv/bin/python bench/concurrency.py [--seconds 40] [--levels 1 2 4] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import common

MODEL = "bench_concurrency"
TABLE = "bench_concurrency_digits"
# Asks the backend's own torch (already imported by the PREDICTs) for its thread pools.
TORCH_THREADS = """DO LANGUAGE plpython3u $torch$
import sys
torch = sys.modules.get("torch")
plpy.notice("torch threads %d %d" % (torch.get_num_threads(), torch.get_num_interop_threads())
            if torch else "torch threads - -")
$torch$"""
WAIT_S = 900  # the longest a session may take to warm up (4 at once on a loaded machine)


def parse_args() -> argparse.Namespace:
    p = common.parser(__doc__, "concurrency")
    p.add_argument("--seconds", type=float, default=40, help="length of each level's PREDICT loop")
    p.add_argument("--levels", type=int, nargs="+", default=[1, 2, 4], help="concurrent sessions")
    p.add_argument("--repeats", type=int, default=3, help="rounds through the levels")
    p.add_argument("--train-rows", type=int, default=320, help="training digits of the model")
    common.add_preload_args(p)
    return p.parse_args()


@dataclass
class Session:
    """One session's figures at one level."""

    pid: int = 0
    warmup_seconds: float = 0.0
    statements: int = 0
    rows: int = 0
    seconds: float = 0.0
    torch_threads: list[int | None] = field(default_factory=list)  # intra-op, inter-op
    after: dict[str, int] = field(default_factory=dict)  # /proc/<pid>/status and PSS after the loop (KiB)
    peak_threads: int = 0  # OS threads of the backend while the loop ran
    error: str | None = None

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0


class Level:
    """``n`` sessions started together; see the module's docstring for the sequence."""

    def __init__(self, dsn: str, sql: str, n: int, seconds: float, data_dir: str) -> None:
        self.dsn, self.sql, self.seconds, self.data_dir = dsn, sql, seconds, data_dir
        self.server_pss = 0  # KiB, read with the backends' memory
        self.sessions = [Session() for _ in range(n)]
        self.warm = threading.Barrier(n + 1, timeout=WAIT_S)  # all warmed up: the loops start
        self.done = threading.Barrier(n + 1, timeout=WAIT_S)  # all loops over: memory is read
        self.release = threading.Event()  # memory read: the sessions may disconnect

    def run(self) -> Level:
        threads = [threading.Thread(target=self._session, args=(s,), daemon=True) for s in self.sessions]
        for t in threads:
            t.start()
        try:
            self.warm.wait()
            sampler = common.Sampler([s.pid for s in self.sessions], ["Threads"], interval=0.5)
            sampler.start()
            self.done.wait()
            peaks = sampler.stop()
            for s in self.sessions:
                s.peak_threads = peaks[s.pid]["Threads"]
                s.after = common.backend_memory(s.pid)
            self.server_pss = common.server_pss(self.data_dir)
        except threading.BrokenBarrierError:
            pass  # a session failed: its error says why
        finally:
            self.release.set()
            for t in threads:
                t.join(WAIT_S)
        errors = [s.error for s in self.sessions if s.error]
        if errors:
            sys.exit(f"a session failed: {errors[0]}")
        return self

    def _session(self, s: Session) -> None:
        import psycopg

        try:
            with psycopg.connect(self.dsn, autocommit=True) as conn:
                s.pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
                _, s.warmup_seconds = common.timed(lambda: conn.execute(self.sql).fetchall())
                self.warm.wait()
                self._loop(conn, s)
                s.torch_threads = torch_threads(conn)
                self.done.wait()
                self.release.wait(WAIT_S)  # the backend stays until its memory has been read
        except Exception as e:  # reported by run(); the barriers must not leave the others waiting
            s.error = f"{type(e).__name__}: {e}"
            self.warm.abort()
            self.done.abort()

    def _loop(self, conn: Any, s: Session) -> None:
        start = time.perf_counter()
        deadline = start + self.seconds
        while time.perf_counter() < deadline:
            s.rows += len(conn.execute(self.sql).fetchall())
            s.statements += 1
        s.seconds = time.perf_counter() - start


def torch_threads(conn: Any) -> list[int | None]:
    """torch's intra-op and inter-op thread counts in this connection's backend."""
    notices: list[str] = []
    conn.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
    conn.execute(TORCH_THREADS)
    words = next((n for n in notices if n.startswith("torch threads")), "torch threads - -").split()[2:]
    return [int(w) if w.isdigit() else None for w in words]


def level_figures(level: Level) -> dict[str, Any]:
    """One level's figures in one round."""
    sessions = level.sessions
    total = sum(s.rows_per_second for s in sessions)
    return {
        "sessions": len(sessions),
        "rows_per_second": total,
        "rows_per_second_per_session": total / len(sessions),
        "rss_sum_mib": sum(s.after["VmRSS"] for s in sessions) / 1024,
        "rss_anon_sum_mib": sum(s.after["RssAnon"] for s in sessions) / 1024,
        "pss_sum_mib": sum(s.after["Pss"] for s in sessions) / 1024,
        "server_pss_mib": level.server_pss / 1024,
        "per_session": [{**asdict(s), "rows_per_second": s.rows_per_second} for s in sessions],
    }


def summarize(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Medians per level over the rounds, and ratios to the smallest level (the baseline)."""
    def med(level: str, key: str) -> float:
        return common.median_of(runs[level], key)

    base = min(runs, key=int)
    levels: dict[str, Any] = {}
    for level, rounds in runs.items():
        sessions = [s for r in rounds for s in r["per_session"]]
        levels[level] = {
            "sessions": int(level),
            "rows_per_second": med(level, "rows_per_second"),
            "rows_per_second_per_session": med(level, "rows_per_second_per_session"),
            "ratio_to_1_session": med(level, "rows_per_second") / med(base, "rows_per_second"),
            "rss_sum_mib": med(level, "rss_sum_mib"),
            "rss_anon_sum_mib": med(level, "rss_anon_sum_mib"),
            "memory_ratio_to_1_session": med(level, "rss_sum_mib") / med(base, "rss_sum_mib"),
            "anon_memory_ratio_to_1_session": med(level, "rss_anon_sum_mib") / med(base, "rss_anon_sum_mib"),
            "pss_sum_mib": med(level, "pss_sum_mib"),
            "pss_memory_ratio_to_1_session": med(level, "pss_sum_mib") / med(base, "pss_sum_mib"),
            "server_pss_mib": med(level, "server_pss_mib"),
            "server_memory_ratio_to_1_session": med(level, "server_pss_mib") / med(base, "server_pss_mib"),
            "warmup_seconds": statistics.median(s["warmup_seconds"] for s in sessions),
            "peak_threads_per_backend": max(s["peak_threads"] for s in sessions),
            # the counts most backends reported (they may differ when a budget is shared)
            "torch_threads": Counter(tuple(s["torch_threads"]) for s in sessions).most_common(1)[0][0],
        }
    return {"baseline_level": int(base), "levels": levels, **verdict(levels)}


def verdict(levels: dict[str, Any]) -> dict[str, Any]:
    """The targets above, checked where the levels they name were run."""
    out: dict[str, Any] = {"target": {"throughput": "4 sessions >= 1.5x the rows/s of 1; no level below 1x",
                                      "memory": "4 sessions < 2x the RSS of 1"}}
    out["meets"] = {"no_level_below_1x": all(v["ratio_to_1_session"] >= 1.0 for v in levels.values())}
    if "4" in levels:
        out["meets"]["throughput_4_sessions_1_5x"] = levels["4"]["ratio_to_1_session"] >= 1.5
        out["meets"]["memory_4_sessions_below_2x"] = levels["4"]["memory_ratio_to_1_session"] < 2.0
        # shared weights (a memory-mapped file) show in the PSS sum, not in the RSS sum
        out["meets"]["memory_4_sessions_below_2x_pss"] = levels["4"]["pss_memory_ratio_to_1_session"] < 2.0
        # the whole server (postmaster, background processes, backends): what the machine spends
        out["meets"]["memory_4_sessions_below_2x_server"] = (
            levels["4"]["server_memory_ratio_to_1_session"] < 2.0)
    return out


def describe(level: int, figures: dict[str, Any]) -> str:
    threads = sorted({tuple(s["torch_threads"]) for s in figures["per_session"]})
    return (f"{level} session(s): {figures['rows_per_second']:.1f} rows/s"
            f" ({figures['rows_per_second_per_session']:.1f} per session), sums: RSS"
            f" {figures['rss_sum_mib']:.0f} MiB, anon {figures['rss_anon_sum_mib']:.0f},"
            f" PSS {figures['pss_sum_mib']:.0f}; server PSS {figures['server_pss_mib']:.0f};"
            f" torch threads {threads}")


def main() -> int:
    args = parse_args()
    import psycopg

    context = common.run_context()
    servers = {"embedded": common.cluster_status()}
    if args.preload_cluster:
        servers["preload"] = common.start_preload_cluster(args.preload_home)
    tests: dict[str, int] = {}
    settings: dict[str, dict[str, str]] = {}
    for label, info in servers.items():
        with psycopg.connect(info["server"], autocommit=True) as conn:
            test = common.digits_classifier(conn, info["files_dir"], MODEL, TABLE, args.train_rows)
            tests[label] = len(test)
            settings[label] = {**common.server_settings(conn),
                               "thanosql.preload": conn.execute("SELECT pg_catalog.current_setting("
                                                                "'thanosql.preload', true)").fetchone()[0]}
    # native ThanoSQL: the sessions go through the proxy, which rewrites it
    sql = f"PREDICT USING {MODEL} OPTIONS (image_col='path') AS SELECT id, path FROM {TABLE}"
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {
        label: {str(n): [] for n in args.levels} for label in servers}
    # round by round, each server in turn: whatever else the machine does falls on both alike
    for r in range(args.repeats):
        for label, info in servers.items():
            for n in args.levels:
                figures = level_figures(Level(info["proxy"], sql, n, args.seconds, info["data_dir"]).run())
                runs[label][str(n)].append(figures)
                print(f"round {r + 1} {label}: {describe(n, figures)}", flush=True)
    for info in servers.values():
        with psycopg.connect(info["server"], autocommit=True) as conn:
            common.clean_up(conn, MODEL, TABLE)
    if args.preload_cluster:
        common.stop_cluster(args.preload_home)
    summary = {label: summarize(r) for label, r in runs.items()}
    common.save(args, "concurrency", runs, summary,
                run_settings={**common.settings(args, skip=("out", "preload_home")),
                              "rows_per_statement": tests, "through": "proxy", "server_settings": settings},
                machine_info=common.machine(**context))
    return 0


if __name__ == "__main__":
    sys.exit(main())
