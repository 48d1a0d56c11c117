"""`thanosql`: control the embedded cluster and proxy, run psql, show rewrites."""

from __future__ import annotations

import argparse
import json
import os
import sys

from thanosql_pg.cluster import Cluster, pg_bindir
from thanosql_pg.errors import ThanoSQLError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="thanosql", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sp = sub.add_parser("start", help="start the embedded PostgreSQL cluster and the proxy")
    sp.add_argument("--foreground", action="store_true",
                    help="stay in the foreground until SIGTERM/SIGINT, then stop (for containers)")
    sp.add_argument("--replica", action="store_true",
                    help="also run a hot standby streaming from the cluster, with its own proxy")
    sp.add_argument("--preload", action=argparse.BooleanOptionalAction, default=None,
                    help="import torch, timm and thanosql_pg once in the server at start, so new "
                    "sessions skip it (the default of a new cluster; switching restarts the server and "
                    "is kept for later starts; with it, Python code changed afterwards needs a restart)")
    stop = sub.add_parser("stop", help="stop the proxy and the cluster (and the standby)")
    stop.add_argument("--replica", action="store_true", help="stop only the standby and its proxy")
    stop.add_argument("--drop", action="store_true",
                      help="with --replica: also remove the standby and its replication slot, so that"
                      " the primary keeps no WAL for it")
    st = sub.add_parser("status", help="show where the cluster and the proxy listen")
    st.add_argument("--json", action="store_true", help="machine-readable output")
    sub.add_parser("psql", help="run psql through the proxy (extra arguments go to psql)")
    rw = sub.add_parser("rewrite", help="print what the preprocessor makes of SQL text")
    rw.add_argument("sql", help="ThanoSQL text; '-' reads standard input")
    wk = sub.add_parser("worker", help="join a BUILD or FIT with remote_workers from this machine")
    wk.add_argument("--join", metavar="HOST:PORT", required=True,
                    help="the address the statement's NOTICE gives")
    wk.add_argument("--secret", help="the statement's secret, from the same NOTICE"
                    " (or the environment variable THANOSQL_WORKER_SECRET)")

    args, extra = parser.parse_known_args(argv)
    if args.command == "worker":
        # a training process: no cluster here, and torch only in it (thanosql_pg.workers.worker)
        from thanosql_pg.workers import worker

        return worker.main(["--join", args.join, *(["--secret", args.secret] if args.secret else [])])
    if extra and args.command != "psql":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    cluster = Cluster()
    try:
        if args.command == "start":
            state = cluster.start_replica(args.preload) if args.replica else cluster.start(args.preload)
            print(f"server: {state.server_uri}\nproxy:  {state.proxy_uri}", flush=True)
            if args.replica:
                print(f"replica server: {state.replica_uri}\nreplica proxy:  {state.replica_proxy_uri}",
                      flush=True)
            if args.foreground:
                _wait_for_signal()
                cluster.stop()
        elif args.command == "stop":
            if args.replica:
                cluster.drop_replica() if args.drop else cluster.stop_replica()
            else:
                cluster.stop()
            print("stopped")
        elif args.command == "status":
            info = cluster.status()
            if args.json:
                print(json.dumps(info))
            else:
                for key, value in info.items():
                    print(f"{key}: {value}")
            return 0 if info["server_running"] and info["proxy_running"] else 3
        elif args.command == "psql":
            state = cluster.state()
            if state is None or not cluster.proxy_running():
                print("thanosql: the cluster is not running; run `thanosql start` first", file=sys.stderr)
                return 3
            psql = str(pg_bindir() / "psql")
            env = dict(os.environ)
            if os.environ.get("THANOSQL_PASSWORD") and "PGPASSWORD" not in env:
                # the proxy connects over TCP, where a password cluster asks for it
                env["PGPASSWORD"] = os.environ["THANOSQL_PASSWORD"]
            os.execve(psql, [psql, state.proxy_uri, *extra], env)
        elif args.command == "rewrite":
            from thanosql_pg.preprocessor import rewrite

            sql = sys.stdin.read() if args.sql == "-" else args.sql
            print(rewrite(sql))
    except ThanoSQLError as e:
        pos = f" (at character {e.position})" if e.position else ""
        print(f"thanosql: ERROR {e.sqlstate}: {e.message}{pos}", file=sys.stderr)
        if e.hint:
            print(f"HINT: {e.hint}", file=sys.stderr)
        return 1
    return 0


def _wait_for_signal() -> None:
    import signal

    received: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: received.append(signum))
    while not received:
        signal.pause()


if __name__ == "__main__":
    sys.exit(main())
