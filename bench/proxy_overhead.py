"""pgbench select-only throughput: direct vs thanosql-proxy vs pgbouncer, side by side.

    .venv/bin/python bench/proxy_overhead.py                     # the embedded cluster (thanosql status)
    .venv/bin/python bench/proxy_overhead.py --seconds 5 --repeats 1 --rows 0 --output /tmp/p.json

Initialises a pgbench database (scale 10 by default) on the server. Then, for each protocol
mode (-M prepared, -M simple) and client count, it runs `pgbench -S` straight to the server
("direct"), through `thanosql-proxy` from this checkout ("proxy": one process, the default;
"proxy_2w": `--workers 2`; see `--proxy-workers` and `--proxy-relays`) or the one at
`--proxy-port`, and through pgbouncer (session pooling; a throwaway config in a temporary
directory, on a free loopback port, started and stopped here), in `--repeats` interleaved
rounds whose order rotates, so that whatever else the machine does falls on every side alike. It
reports each side's median TPS and the ratios <side>/direct and <side>/pgbouncer, plus the
CPU the proxy and pgbouncer processes spent per transaction (user + system, from /proc:
the cost a middleman adds, which TPS on a shared machine only shows through the noise).

Then it times one big result of narrow rows (`--rows`, a COPY TO STDOUT of one int column
read by psql), where the proxy's per-message work (it frames the server's stream to follow
ParameterStatus) weighs most.

pgbouncer is optional: when it is not installed (Debian: `apt-get install pgbouncer`) the
benchmark says so and leaves that column out. The proxy and pgbouncer both reach the server
the same way (`--upstream-host`, TCP to `--host` by default, like `thanosql start`).
The JSON (bench/results/proxy_overhead.json, or `--output`) records the machine and the load
average before and after every case.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import pwd
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PG_BIN = Path("/usr/lib/postgresql/15/bin")
TPS_RE = re.compile(r"^tps = ([0-9.]+) \(without initial connection time\)", re.M)
FAILED_RE = re.compile(r"^number of failed transactions: (\d+)", re.M)
PROCESSED_RE = re.compile(r"^number of transactions actually processed: (\d+)", re.M)
CLK_TCK = os.sysconf("SC_CLK_TCK")


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
    p.add_argument(
        "--proxy-port",
        type=int,
        help="benchmark the proxy already listening here instead of starting one from this checkout",
    )
    p.add_argument(
        "--start-proxy",
        action="store_true",
        help="start a proxy from this checkout (the default unless --proxy-port is given)",
    )
    p.add_argument(
        "--proxy-workers",
        default="1,2",
        help="comma-separated --workers of the proxies started here, each its own column: "
        "'proxy' (1 worker, the default deployment), 'proxy_2w' (2 workers), ...",
    )
    p.add_argument(
        "--proxy-relays",
        default="threads",
        help="comma-separated --relay modes of the proxies started here (threads, loop): one "
        "column per mode and worker count, 'proxy_loop', 'proxy_loop_2w', ... for loop",
    )
    p.add_argument("--no-pgbouncer", action="store_true", help="leave pgbouncer out")
    p.add_argument("--pgbouncer", default=shutil.which("pgbouncer") or "/usr/sbin/pgbouncer",
                   help="the pgbouncer executable")
    p.add_argument("--user", default=status.get("superuser") or os.environ.get("USER") or "postgres")
    p.add_argument("--dbname", default="thanosql_bench", help="database pgbench runs in (created if missing)")
    p.add_argument(
        "--admin-db",
        default=status.get("database") or "postgres",
        help="database to connect to for CREATE DATABASE",
    )
    p.add_argument("--scale", type=int, default=10)
    p.add_argument("--seconds", type=int, default=20, help="length of each pgbench run")
    p.add_argument("--clients", default="1,8", help="comma-separated client counts")
    p.add_argument("--modes", default="prepared,simple", help="comma-separated pgbench -M modes")
    p.add_argument("--repeats", type=int, default=3, help="interleaved rounds per case")
    p.add_argument("--rows", type=int, default=2_000_000, help="rows of the narrow-rows COPY (0: skip it)")
    p.add_argument(
        "--upstream-host",
        help="where the proxy and pgbouncer started here connect (default: --host, over TCP like "
        "`thanosql start`; a directory starting with '/' means its Unix socket)",
    )
    p.add_argument("--output", "--out", type=Path, default=ROOT / "bench" / "results" / "proxy_overhead.json")
    args = p.parse_args()
    if args.port is None:
        p.error("no running embedded cluster found: give --port (and --proxy-port or let it start a proxy)")
    args.start_proxy = args.proxy_port is None
    args.upstream_host = args.upstream_host or args.host
    return args


def psql(args: argparse.Namespace, dbname: str, sql: str) -> str:
    res = subprocess.run(
        [tool("psql"), "-X", "-At", "-h", args.host, "-p", str(args.port), "-U", args.user, "-d", dbname,
         "-c", sql],
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
            [tool("pgbench"), "-i", "-q", "-s", str(args.scale), "-h", args.host, "-p", str(args.port),
             "-U", args.user, args.dbname],
            check=True,
            capture_output=True,
        )
    psql(args, args.dbname, "VACUUM ANALYZE")


# --- the middlemen -----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port: int, proc: subprocess.Popen, what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with status {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} is not listening on port {port} after {timeout:.0f} s")


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU of a process and its live children (the proxy's workers)."""
    if pid is None:
        return 0.0
    total = 0.0
    with contextlib.suppress(OSError):
        # Fields after the command name, which may contain spaces, hence the rpartition.
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        total += (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        total += sum(cpu_seconds(int(c)) for c in children)
    return total


class Proxy:
    """A `thanosql-proxy` from this checkout with `workers` processes, or the one already
    at --proxy-port."""

    def __init__(self, args: argparse.Namespace, workers: int = 1, relay: str = "threads") -> None:
        self.args = args
        self.workers = workers
        self.relay = relay
        self.name = "proxy" + ("" if relay == "threads" else f"_{relay}")
        self.name += "" if workers == 1 else f"_{workers}w"
        self.proc: subprocess.Popen | None = None
        self.port: int = args.proxy_port or 0
        self.pid: int | None = None

    def start(self) -> None:
        if not self.args.start_proxy:
            return
        cmd = [sys.executable, "-m", "thanosql_pg.proxy.server", "--listen-port", "0",
               "--upstream-host", self.args.upstream_host, "--upstream-port", str(self.args.port),
               "--log-level", "WARNING", "--workers", str(self.workers), "--relay", self.relay]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=ROOT)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        match = re.search(r"listening on \S+:(\d+),", line)
        if match is None:
            self.proc.kill()
            sys.exit(f"the proxy did not start: {line!r}")
        self.port = int(match.group(1))
        self.pid = self.proc.pid

    def describe(self) -> str:
        where = f"{self.args.proxy_host}:{self.port}"
        if self.proc is None:
            return where
        return f"{where} (started by this script: --workers {self.workers} --relay {self.relay})"

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(15)


class PgBouncer:
    """pgbouncer in session pooling mode with a throwaway config, on a free loopback port."""

    name = "pgbouncer"

    def __init__(self, args: argparse.Namespace, pool_size: int) -> None:
        self.args = args
        self.pool_size = pool_size
        self.dir: Path | None = None
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.pid: int | None = None
        self.version = ""

    def start(self) -> None:
        exe = self.args.pgbouncer
        self.version = subprocess.run([exe, "--version"], capture_output=True, text=True,
                                      check=False).stdout.splitlines()[0]
        self.dir = Path(tempfile.mkdtemp(prefix="thanosql-bench-pgbouncer-"))
        self.port = free_port()
        upstream = self.args.upstream_host
        (self.dir / "userlist.txt").write_text(f'"{self.args.user}" ""\n')
        # Trust, like the cluster's pg_hba for loopback: auth_type=trust still wants the user
        # listed in auth_file. No logging per connection and no Unix socket of its own.
        (self.dir / "pgbouncer.ini").write_text(
            "[databases]\n"
            f"* = host={upstream} port={self.args.port}\n"
            "[pgbouncer]\n"
            "listen_addr = 127.0.0.1\n"
            f"listen_port = {self.port}\n"
            "unix_socket_dir =\n"
            "auth_type = trust\n"
            f"auth_file = {self.dir / 'userlist.txt'}\n"
            "pool_mode = session\n"
            "max_client_conn = 200\n"
            f"default_pool_size = {self.pool_size}\n"
            "log_connections = 0\n"
            "log_disconnections = 0\n"
            "log_pooler_errors = 1\n"
            "stats_period = 3600\n"
            f"logfile = {self.dir / 'pgbouncer.log'}\n"
        )
        cmd = [exe, "-q", str(self.dir / "pgbouncer.ini")]
        if os.geteuid() == 0:
            # pgbouncer refuses to run as root; -u makes it switch to an ordinary user.
            user = next((u for u in ("postgres", "nobody") if _user_exists(u)), None)
            if user is None:
                raise RuntimeError("pgbouncer will not run as root and there is no postgres/nobody user")
            shutil.chown(self.dir, user)
            for f in self.dir.iterdir():
                shutil.chown(f, user)
            cmd += ["-u", user]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            wait_listening(self.port, self.proc, "pgbouncer")
        except RuntimeError as exc:
            self.stop()
            raise RuntimeError(f"{exc}: {self.log_tail()}") from None
        self.pid = self.proc.pid

    def log_tail(self) -> str:
        text = ""
        if self.proc is not None and self.proc.stderr is not None and self.proc.poll() is not None:
            text = self.proc.stderr.read()
        if self.dir is not None and (self.dir / "pgbouncer.log").exists():
            text += (self.dir / "pgbouncer.log").read_text()
        return text.strip()[-2000:]

    def describe(self) -> str:
        return f"127.0.0.1:{self.port} ({self.version}, pool_mode=session, started by this script)"

    def stop(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(15)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            self.proc = None
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


# --- running pgbench ---------------------------------------------------------------------------


def pgbench(host: str, port: int, args: argparse.Namespace, clients: int, mode: str,
            pid: int | None) -> dict:
    """One `pgbench -S` run: its TPS and, for a middleman, the CPU it used per transaction."""
    cmd = [tool("pgbench"), "-S", "-n", "-T", str(args.seconds), "-c", str(clients), "-j", str(clients),
           "-M", mode, "-h", host, "-p", str(port), "-U", args.user, args.dbname]
    cpu_before = cpu_seconds(pid)
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    cpu = cpu_seconds(pid) - cpu_before
    tps = TPS_RE.search(res.stdout)
    failed = FAILED_RE.search(res.stdout)
    processed = PROCESSED_RE.search(res.stdout)
    if res.returncode != 0 or tps is None or (failed and int(failed.group(1))):
        sys.exit(f"pgbench failed ({' '.join(cmd)}):\n{res.stdout}\n{res.stderr}")
    run = {"tps": float(tps.group(1))}
    if pid is not None and processed is not None and int(processed.group(1)):
        # Includes connection set-up, a few hundred microseconds among millions of round trips.
        run["cpu_us_per_txn"] = round(cpu / int(processed.group(1)) * 1e6, 2)
    return run


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def pgbench_case(args: argparse.Namespace, sides: dict[str, tuple[str, int, int | None]], mode: str,
                 clients: int) -> dict:
    names = list(sides)
    runs: dict[str, list[dict]] = {name: [] for name in names}
    load_before = load_average()
    for r in range(args.repeats):
        # Rotate the order every round: no side always runs first, or right after another.
        for name in names[r % len(names):] + names[: r % len(names)]:
            host, port, pid = sides[name]
            runs[name].append(pgbench(host, port, args, clients, mode, pid))
    row: dict = {"mode": mode, "clients": clients}
    for name in names:
        row[f"{name}_tps"] = [run["tps"] for run in runs[name]]
        row[f"{name}_median"] = round(statistics.median(row[f"{name}_tps"]), 1)
        cpu = [run["cpu_us_per_txn"] for run in runs[name] if "cpu_us_per_txn" in run]
        if cpu:
            row[f"{name}_cpu_us_per_txn_median"] = statistics.median(cpu)
    for a in names:
        for b in ("direct", "pgbouncer"):
            if a != b and b in sides and not (a == "direct" and b == "pgbouncer"):
                row[f"{a}/{b}"] = round(row[f"{a}_median"] / row[f"{b}_median"], 3)
    # Other work on the machine skews every side: 1, 5 and 15-minute load before and after.
    row["load_average_before"] = load_before
    row["load_average_after"] = load_average()
    parts = [f"{name} {row[f'{name}_median']:8.0f}" for name in names]
    ratios = [f"{k} {v:.2f}" for k, v in row.items() if "/" in k]
    print(f"-M {mode:8} -c {clients}: {', '.join(parts)} tps; {', '.join(ratios)}; "
          f"load {load_before[0]:.2f}", flush=True)
    return row


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


def narrow_rows(args: argparse.Namespace, sides: dict[str, tuple[str, int, int | None]]) -> dict:
    seconds: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(args.repeats):
        for name, (host, port, _pid) in sides.items():
            seconds[name].append(copy_rows_seconds(host, port, args))
    row: dict = {"rows": args.rows, "load_average_before": load_average()}
    for name in sides:
        row[f"{name}_seconds"] = seconds[name]
        row[f"{name}_median"] = statistics.median(seconds[name])
    for name in sides:
        if name != "direct":  # throughput ratio
            row[f"{name}/direct"] = round(row["direct_median"] / row[f"{name}_median"], 3)
    print(f"COPY {args.rows} narrow rows: "
          + ", ".join(f"{name} {row[f'{name}_median']:.2f} s" for name in sides), flush=True)
    return row


def main() -> int:
    args = parse_args()
    ensure_database(args)
    clients = [int(c) for c in args.clients.split(",")]
    modes = args.modes.split(",")
    workers = [int(w) for w in args.proxy_workers.split(",")] if args.start_proxy else [1]
    relays = args.proxy_relays.split(",") if args.start_proxy else ["threads"]
    proxies = [Proxy(args, w, r) for r in relays for w in workers]
    bouncer: PgBouncer | None = None
    pgbouncer_note = None
    if args.no_pgbouncer:
        pgbouncer_note = "left out (--no-pgbouncer)"
    elif not Path(args.pgbouncer).exists():
        pgbouncer_note = f"not installed ({args.pgbouncer}): apt-get install pgbouncer; column skipped"
        print(f"pgbouncer {pgbouncer_note}", flush=True)
    else:
        bouncer = PgBouncer(args, pool_size=max(clients) + 2)
    started = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    load_start = load_average()
    results = []
    rows = None
    try:
        sides: dict[str, tuple[str, int, int | None]] = {"direct": (args.host, args.port, None)}
        for proxy in proxies:
            proxy.start()
            sides[proxy.name] = (args.proxy_host, proxy.port, proxy.pid)
        if bouncer is not None:
            try:
                bouncer.start()
            except (OSError, RuntimeError) as exc:
                pgbouncer_note = f"did not start ({exc}); column skipped"
                print(f"pgbouncer {pgbouncer_note}", flush=True)
                bouncer = None
            else:
                sides["pgbouncer"] = ("127.0.0.1", bouncer.port, bouncer.pid)
        for mode in modes:
            for c in clients:
                results.append(pgbench_case(args, sides, mode, c))
        rows = narrow_rows(args, sides) if args.rows else None
    finally:
        for proxy in proxies:
            proxy.stop()
        if bouncer is not None:
            bouncer.stop()
    try:
        import uvloop  # type: ignore[import-not-found]  # noqa: F401

        loop = "uvloop"
    except ImportError:
        loop = "asyncio"
    report = {
        "benchmark": "pgbench -S (select-only): direct vs thanosql-proxy vs pgbouncer",
        "when": started,
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "load_average_start": load_start,
            "load_average_end": load_average(),
        },
        "event_loop": loop,
        "server": f"{args.host}:{args.port}",
        "upstream": f"{args.upstream_host}:{args.port}",
        "proxies": {proxy.name: proxy.describe() for proxy in proxies},
        "pgbouncer": bouncer.describe() if bouncer is not None else pgbouncer_note,
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
