"""pgbench select-only throughput straight to PostgreSQL vs through thanosql-proxy.

    .venv/bin/python bench/proxy_overhead.py              # the embedded cluster (thanosql status)
    .venv/bin/python bench/proxy_overhead.py --seconds 5 --clients 1,8 --start-proxy

Initialises a pgbench database (scale 10 by default) on the server, then for each protocol
mode (-M prepared, -M simple) and client count runs `pgbench -S` alternately direct and
through the proxy, `--repeats` times each, and reports the median TPS of each side and
their ratio (proxy / direct). Then it times one big result of narrow rows (`--rows`, a COPY
TO STDOUT of one int column read by psql), where the proxy's per-message work (it frames
the server's stream to follow ParameterStatus) weighs most. Results go to
bench/results/proxy_overhead.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PG_BIN = Path("/usr/lib/postgresql/15/bin")
TPS_RE = re.compile(r"^tps = ([0-9.]+) \(without initial connection time\)", re.M)
FAILED_RE = re.compile(r"^number of failed transactions: (\d+)", re.M)


def tool(name: str) -> str:
    return shutil.which(name) or str(PG_BIN / name)


def cluster_status() -> dict:
    """`thanosql status --json` of the embedded cluster, or {} when there is none."""
    exe = Path(sys.executable).parent / "thanosql"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "thanosql_pg.cli"]
    try:
        out = subprocess.run(
            [*cmd, "status", "--json"], capture_output=True, text=True, cwd=ROOT, check=False
        )
        info = json.loads(out.stdout)
    except (OSError, ValueError):
        return {}
    return info if info.get("server_running") else {}


def parse_args() -> argparse.Namespace:
    status = cluster_status()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1", help="server host (direct runs)")
    p.add_argument("--port", type=int, default=status.get("port"), help="server port")
    p.add_argument("--proxy-host", default="127.0.0.1")
    p.add_argument("--proxy-port", type=int, default=status.get("proxy_port"))
    p.add_argument("--user", default=status.get("superuser") or os.environ.get("USER") or "postgres")
    p.add_argument("--dbname", default="thanosql_bench", help="database pgbench runs in (created if missing)")
    p.add_argument(
        "--admin-db",
        default=status.get("database") or "postgres",
        help="database to connect to for CREATE DATABASE",
    )
    p.add_argument("--scale", type=int, default=10)
    p.add_argument("--seconds", type=int, default=10, help="length of each pgbench run")
    p.add_argument("--clients", default="1,8", help="comma-separated client counts")
    p.add_argument("--modes", default="prepared,simple", help="comma-separated pgbench -M modes")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--rows", type=int, default=2_000_000, help="rows of the narrow-rows COPY (0: skip it)")
    p.add_argument(
        "--start-proxy",
        action="store_true",
        help="benchmark a fresh `thanosql-proxy` from this checkout instead of the one at --proxy-port",
    )
    p.add_argument(
        "--upstream-host",
        help="where a --start-proxy proxy connects (default: --host, over TCP like `thanosql start`)",
    )
    p.add_argument("--output", type=Path, default=ROOT / "bench" / "results" / "proxy_overhead.json")
    args = p.parse_args()
    if args.port is None or (args.proxy_port is None and not args.start_proxy):
        p.error("no running embedded cluster found: give --port and --proxy-port (or --start-proxy)")
    return args


def psql(args: argparse.Namespace, dbname: str, sql: str) -> str:
    res = subprocess.run(
        [
            tool("psql"),
            "-X",
            "-At",
            "-h",
            args.host,
            "-p",
            str(args.port),
            "-U",
            args.user,
            "-d",
            dbname,
            "-c",
            sql,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if res.returncode != 0:
        sys.exit(f"psql failed: {res.stderr.strip()}")
    return res.stdout.strip()


def ensure_database(args: argparse.Namespace) -> None:
    if not psql(args, args.admin_db, f"SELECT 1 FROM pg_database WHERE datname = '{args.dbname}'"):
        psql(args, args.admin_db, f'CREATE DATABASE "{args.dbname}"')
    have = -1
    if psql(args, args.dbname, "SELECT to_regclass('pgbench_branches') IS NOT NULL") == "t":
        have = int(psql(args, args.dbname, "SELECT count(*) FROM pgbench_branches"))
    if have != args.scale:
        print(f"initialising pgbench scale {args.scale} in {args.dbname} ...", flush=True)
        subprocess.run(
            [
                tool("pgbench"),
                "-i",
                "-q",
                "-s",
                str(args.scale),
                "-h",
                args.host,
                "-p",
                str(args.port),
                "-U",
                args.user,
                args.dbname,
            ],
            check=True,
            capture_output=True,
        )
    psql(args, args.dbname, "VACUUM ANALYZE")


def start_proxy(args: argparse.Namespace) -> subprocess.Popen:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "thanosql_pg.proxy.server",
            "--listen-port",
            "0",
            "--upstream-host",
            args.upstream_host or args.host,
            "--upstream-port",
            str(args.port),
            "--log-level",
            "WARNING",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    match = re.search(r"listening on \S+:(\d+),", line)
    if match is None:
        proc.kill()
        sys.exit(f"the proxy did not start: {line!r}")
    args.proxy_port = int(match.group(1))
    return proc


def pgbench(host: str, port: int, args: argparse.Namespace, clients: int, mode: str) -> float:
    cmd = [
        tool("pgbench"),
        "-S",
        "-n",
        "-T",
        str(args.seconds),
        "-c",
        str(clients),
        "-j",
        str(clients),
        "-M",
        mode,
        "-h",
        host,
        "-p",
        str(port),
        "-U",
        args.user,
        args.dbname,
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    tps = TPS_RE.search(res.stdout)
    failed = FAILED_RE.search(res.stdout)
    if res.returncode != 0 or tps is None or (failed and int(failed.group(1))):
        sys.exit(f"pgbench failed ({' '.join(cmd)}):\n{res.stdout}\n{res.stderr}")
    return float(tps.group(1))


def copy_rows_seconds(host: str, port: int, args: argparse.Namespace) -> float:
    """Wall time of psql reading `--rows` one-column rows with COPY TO STDOUT (to /dev/null)."""
    sql = f"COPY (SELECT g FROM generate_series(1, {args.rows}) g) TO STDOUT"
    cmd = [tool("psql"), "-X", "-q", "-h", host, "-p", str(port), "-U", args.user, "-d", args.dbname]
    cmd += ["-c", sql]
    started = time.perf_counter()
    res = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, check=False)
    elapsed = time.perf_counter() - started
    if res.returncode != 0:
        sys.exit(f"psql failed ({' '.join(cmd)}):\n{res.stderr}")
    return elapsed


def narrow_rows(args: argparse.Namespace) -> dict:
    direct: list[float] = []
    proxied: list[float] = []
    for _ in range(args.repeats):
        direct.append(copy_rows_seconds(args.host, args.port, args))
        proxied.append(copy_rows_seconds(args.proxy_host, args.proxy_port, args))
    row = {
        "rows": args.rows,
        "direct_seconds": direct,
        "proxy_seconds": proxied,
        "direct_median": statistics.median(direct),
        "proxy_median": statistics.median(proxied),
    }
    row["ratio"] = round(row["direct_median"] / row["proxy_median"], 3)  # throughput ratio
    print(
        f"COPY {args.rows} narrow rows: direct {row['direct_median']:.2f} s, "
        f"proxy {row['proxy_median']:.2f} s, throughput ratio {row['ratio']:.2f}",
        flush=True,
    )
    return row


def main() -> int:
    args = parse_args()
    ensure_database(args)
    proxy = start_proxy(args) if args.start_proxy else None
    clients = [int(c) for c in args.clients.split(",")]
    modes = args.modes.split(",")
    results = []
    try:
        for mode in modes:
            for c in clients:
                direct: list[float] = []
                proxied: list[float] = []
                load = round(os.getloadavg()[0], 2)
                for _ in range(args.repeats):  # alternate so drift hits both sides alike
                    direct.append(pgbench(args.host, args.port, args, c, mode))
                    proxied.append(pgbench(args.proxy_host, args.proxy_port, args, c, mode))
                row = {
                    "mode": mode,
                    "clients": c,
                    "direct_tps": direct,
                    "proxy_tps": proxied,
                    "direct_median": statistics.median(direct),
                    "proxy_median": statistics.median(proxied),
                    # Other work on the machine skews both sides; 1-minute load before the runs.
                    "load_average_before": load,
                }
                row["ratio"] = round(row["proxy_median"] / row["direct_median"], 3)
                results.append(row)
                print(
                    f"-M {mode:8} -c {c}: direct {row['direct_median']:9.0f} tps, "
                    f"proxy {row['proxy_median']:9.0f} tps, ratio {row['ratio']:.2f}",
                    flush=True,
                )
        rows = narrow_rows(args) if args.rows else None
    finally:
        if proxy is not None:
            proxy.terminate()
            proxy.wait(15)
    try:
        import uvloop  # type: ignore[import-not-found]  # noqa: F401

        loop = "uvloop"
    except ImportError:
        loop = "asyncio"
    report = {
        "benchmark": "pgbench -S (select-only), direct vs through thanosql-proxy",
        "when": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "event_loop": loop,
        "server": f"{args.host}:{args.port}",
        "proxy": f"{args.proxy_host}:{args.proxy_port}" + (" (started by this script)" if proxy else ""),
        "scale": args.scale,
        "seconds_per_run": args.seconds,
        "repeats": args.repeats,
        "results": results,
        "narrow_rows": rows,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
