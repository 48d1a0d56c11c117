"""The embedded PostgreSQL cluster and proxy that `thanosql start` manages.

Everything lives under one home directory: ``$THANOSQL_HOME``, or
``.thanosql/`` in the checkout. PostgreSQL refuses to run as root, so when
the CLI runs as root the server runs as the ``postgres`` OS user, which owns
the data directory; the proxy runs as the caller.
"""

from __future__ import annotations

import getpass
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from thanosql_pg.errors import ConfigurationError

DATABASE = "thanosql"
# Server-wide progress (thanosql.progress) and the count of sessions running models
# live in shared memory, which a library can only request at server start.
PRELOAD_OFF = "shared_preload_libraries = 'thanosql, pg_cron'  # thanosql.progress and jobs, pg_cron"
# The default of a new cluster (`thanosql start`; `--no-preload` switches it off, and is kept):
# the postmaster also starts PL/Python and imports torch, timm and thanosql_pg (src/preload.c),
# so a new session's first call skips seconds of imports. Python code changed after the
# server started is seen only after a restart.
PRELOAD_ON = ("shared_preload_libraries = 'plpython3, thanosql, pg_cron'  # thanosql start --preload",
               "thanosql.preload = on")
# Lines of earlier releases, replaced by the above
OLD_PRELOAD = ("shared_preload_libraries = 'thanosql'  # thanosql.progress, shared CPU budget",
               "shared_preload_libraries = 'plpython3, thanosql'  # thanosql start --preload")
# Background jobs (thanosql's launcher and job workers) and pg_cron's schedules run in
# background workers: pg_cron's run in this cluster's database, without a connection.
# And autovacuum looks at the databases every 10 s (not every minute): models and
# checkpoints dropped are reused sooner (extension/idempotent/005-storage.sql).
JOB_LINES = ("max_worker_processes = 32", "cron.database_name = 'thanosql'",
             "cron.use_background_workers = on", "autovacuum_naptime = '10s'")
# A line of an earlier 0.3.0 development build, removed: 4 GB of WAL kept between checkpoints
# cost more disk than the checkpoints it saved were worth.
OLD_JOB_LINES = ("max_wal_size = '4GB'",)
FIRST_PORT = 54320
# The hot standby (start --replica) streams through this physical replication slot; the
# primary keeps at most this much WAL for it while it is stopped.
REPLICA_SLOT = "thanosql_replica"
REPLICA_WAL_KEEP = "1GB"
# pg_hba with THANOSQL_PASSWORD: SCRAM for every TCP connection (the proxy's included);
# the Unix socket only for OS users logging in as their own role (`peer`, see pg_ident).
_PASSWORD_HBA = ("local all all peer map=thanosql\nhost all all all scram-sha-256\n"
                 "host replication all all scram-sha-256\n")
# What clusters made before had: a trusted socket, which the proxy used to connect through.
_OLD_PASSWORD_HBA = "local all all trust\nhost all all all scram-sha-256\n"


def checkout_dir() -> Path:
    # thanosql_pg is installed editable into .venv, so the package sits in the checkout.
    return Path(__file__).resolve().parent.parent


def home_dir() -> Path:
    env = os.environ.get("THANOSQL_HOME")
    return Path(env).resolve() if env else checkout_dir() / ".thanosql"


def pg_bindir() -> Path:
    pg_config = os.environ.get("PG_CONFIG", "/usr/lib/postgresql/15/bin/pg_config")
    out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=True)
    return Path(out.stdout.strip())


def venv_dir() -> Path:
    # sys.prefix is the virtualenv when the CLI runs from .venv/bin/thanosql.
    return Path(sys.prefix)


@dataclass
class State:
    port: int
    proxy_port: int
    superuser: str
    listen: str = "127.0.0.1"
    # a hot standby of the cluster (`thanosql start --replica`), when made
    replica_port: int | None = None
    replica_proxy_port: int | None = None

    @property
    def replica_uri(self) -> str | None:
        return _uri(self.superuser, self.replica_port)

    @property
    def replica_proxy_uri(self) -> str | None:
        return _uri(self.superuser, self.replica_proxy_port)

    @property
    def server_uri(self) -> str:
        return f"postgresql://{self.superuser}@127.0.0.1:{self.port}/{DATABASE}"

    @property
    def proxy_uri(self) -> str:
        return f"postgresql://{self.superuser}@127.0.0.1:{self.proxy_port}/{DATABASE}"


class Cluster:
    def __init__(self, home: Path | None = None) -> None:
        self.home = home or home_dir()
        self.data = self.home / "data"
        self.run_dir = self.home / "run"
        self.files = self.home / "files"
        self.state_file = self.home / "state.json"
        self.server_log = self.home / "server.log"
        self.proxy_log = self.home / "proxy.log"
        self.proxy_pid = self.run_dir / "proxy.pid"
        self.replica = self.home / "replica"
        self.replica_log = self.home / "replica.log"
        self.replica_proxy_pid = self.run_dir / "replica-proxy.pid"
        self.replica_proxy_log = self.home / "replica-proxy.log"
        self.as_root = os.geteuid() == 0

    # -- helpers --------------------------------------------------------------
    def _server_cmd(self, args: list[str]) -> list[str]:
        """Run a server-side binary as the data directory's owner."""
        if self.as_root:
            return ["runuser", "-u", "postgres", "--", *args]
        return args

    def _chown(self, path: Path) -> None:
        if self.as_root:
            shutil.chown(path, "postgres", "postgres")

    def state(self) -> State | None:
        if not self.state_file.exists():
            return None
        return State(**json.loads(self.state_file.read_text()))

    def _save_state(self, state: State) -> None:
        self.state_file.write_text(json.dumps(asdict(state)))

    def server_running(self, data: Path | None = None) -> bool:
        data = data or self.data
        if not (data / "postmaster.pid").exists():
            return False
        res = subprocess.run(
            self._server_cmd([str(pg_bindir() / "pg_ctl"), "status", "-D", str(data)]),
            capture_output=True, check=False,
        )
        return res.returncode == 0

    def proxy_running(self, pid_file: Path | None = None, port: int | None = None) -> bool:
        try:
            pid = int((pid_file or self.proxy_pid).read_text())
            os.kill(pid, 0)
        except (OSError, ValueError):
            return False
        if port is None:
            state = self.state()
            port = state.proxy_port if state is not None else None
        return port is not None and _port_open(port)

    # -- lifecycle --------------------------------------------------------------
    def init(self) -> State:
        state = self.state()
        if state and (self.data / "PG_VERSION").exists():
            return state
        self.home.mkdir(parents=True, exist_ok=True)
        for d in (self.run_dir, self.files):
            d.mkdir(exist_ok=True)
            self._chown(d)
        if self.data.exists():
            shutil.rmtree(self.data)  # a half-made cluster from an interrupted init
        self.data.mkdir()
        self._chown(self.data)
        os.chmod(self.data, 0o700)
        superuser = getpass.getuser()
        # Fixed ports and a wider listen address are for containers (see Dockerfile).
        port = int(os.environ.get("THANOSQL_PORT") or _free_port(FIRST_PORT))
        proxy_port = int(os.environ.get("THANOSQL_PROXY_PORT") or _free_port(port + 1))
        listen = os.environ.get("THANOSQL_LISTEN_ADDRESSES", "127.0.0.1")
        password = os.environ.get("THANOSQL_PASSWORD")
        if listen != "127.0.0.1" and not password:
            raise ConfigurationError(
                f"listening on {listen} needs a password",
                hint="Set THANOSQL_PASSWORD; remote connections then use SCRAM authentication.",
            )
        subprocess.run(
            self._server_cmd([
                str(pg_bindir() / "initdb"), "-D", str(self.data), "-U", superuser,
                "--auth=trust", "-E", "UTF8", "--locale=C.UTF-8",
            ]),
            check=True, stdout=subprocess.DEVNULL,
        )
        conf = f"""
# --- thanosql embedded cluster ---
listen_addresses = '{_server_listen_addresses(listen)}'
port = {port}
unix_socket_directories = '{self.run_dir}'
# torch and PostgreSQL's LLVM JIT clash inside one backend (PostgresML saw crashes).
jit = off
{chr(10).join(PRELOAD_ON)}
thanosql.python_lib_dir = '{venv_dir()}'
thanosql.data_dir = '{self.files}'
"""
        with open(self.data / "postgresql.conf", "a") as f:
            f.write(conf)
        if password:
            self._write_password_hba(superuser)
        state = State(port=port, proxy_port=proxy_port, superuser=superuser, listen=listen)
        self._save_state(state)
        if password:
            self.start()
            escaped = password.replace("'", "''")
            self._psql(state, "postgres", f"ALTER ROLE {superuser} PASSWORD '{escaped}'")
        return state

    def _write_password_hba(self, superuser: str) -> None:
        """pg_hba for a cluster with a password: every TCP connection, the proxy's included,
        authenticates with SCRAM; the Unix socket only with `peer`, for the CLI's own psql.

        The proxy connects upstream over TCP, so PostgreSQL authenticates its clients, not
        the proxy's OS user: a trusted (or peer-authenticated) socket behind the proxy would
        make every proxy client a superuser without a password.
        """
        os_user = pwd.getpwuid(os.geteuid()).pw_name
        # The CLI's OS user may log in as the superuser (their names can differ: getpass
        # reads $USER); otherwise an OS user may log in only as the role of its own name.
        ident = f"thanosql {os_user} {superuser}\nthanosql /^(.*)$ \\1\n"
        (self.data / "pg_ident.conf").write_text(ident)
        (self.data / "pg_hba.conf").write_text(_PASSWORD_HBA)

    def _upgrade_password_hba(self, state: State) -> None:
        """Clusters made before the proxy used TCP trusted the Unix socket, and their proxy
        connected through it: switch the socket to `peer` and restart that proxy."""
        hba = self.data / "pg_hba.conf"
        if not (hba.exists() and hba.read_text() == _OLD_PASSWORD_HBA):
            return
        self._write_password_hba(state.superuser)
        self._stop_proxy()
        if self.server_running():
            subprocess.run(
                self._server_cmd([str(pg_bindir() / "pg_ctl"), "reload", "-D", str(self.data)]),
                check=True, stdout=subprocess.DEVNULL,
            )

    def preloading(self) -> bool:
        """Whether the server is configured to import the ML libraries at start (--preload)."""
        conf = self.data / "postgresql.conf"
        return conf.exists() and PRELOAD_ON[1] in conf.read_text().splitlines()

    def configure_preload(self, preload: bool | None = None) -> bool:
        """The preload lines as asked (None: as they are). Clusters made by earlier releases
        lack the line for thanosql's shared memory: add it. True when postgresql.conf
        changed (the server must restart to load it)."""
        conf = self.data / "postgresql.conf"
        text = conf.read_text()
        lines = text.splitlines()
        want = self.preloading() if preload is None else preload
        ours = {PRELOAD_OFF, *PRELOAD_ON, *OLD_PRELOAD, *JOB_LINES, *OLD_JOB_LINES}
        wanted = [*(PRELOAD_ON if want else (PRELOAD_OFF,)), *JOB_LINES]
        if [line for line in lines if line in ours] == wanted:
            return False
        kept = [line for line in lines if line not in ours]
        conf.write_text("\n".join([*kept, *wanted]) + "\n")
        return True

    def start(self, preload: bool | None = None) -> State:
        """Start the server and the proxy. ``preload`` True/False turns the import of the ML
        libraries at server start on/off (kept for later starts); None leaves it as it is."""
        state = self.init()
        self._upgrade_password_hba(state)
        if self.configure_preload(preload) and self.server_running():
            subprocess.run(
                self._server_cmd([str(pg_bindir() / "pg_ctl"), "restart", "-w", "-t", "60", "-m", "fast",
                                  "-D", str(self.data), "-l", str(self.server_log)]),
                check=True, stdout=subprocess.DEVNULL,
            )
            self._ensure_database(state)
        if not self.server_running():
            if not _port_free(state.port):
                raise ConfigurationError(f"port {state.port} is taken by another program",
                                         hint=f"Stop it, or delete {self.state_file} to pick new ports.")
            log = self.server_log
            log.touch()
            self._chown(log)
            subprocess.run(
                self._server_cmd([str(pg_bindir() / "pg_ctl"), "start", "-w", "-t", "60", "-D",
                                  str(self.data), "-l", str(log)]),
                check=True, stdout=subprocess.DEVNULL,
            )
            self._ensure_database(state)
        if not self.proxy_running():
            self._start_proxy(state)
        return state

    def _psql(self, state: State, dbname: str, sql: str) -> str:
        # Over the Unix socket: trusted, or `peer` (the OS user running this) when TCP needs
        # a password.
        res = subprocess.run(
            [str(pg_bindir() / "psql"), "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-h", str(self.run_dir),
             "-p", str(state.port), "-U", state.superuser, "-d", dbname, "-c", sql],
            capture_output=True, text=True, check=False,
        )
        if res.returncode != 0:
            raise ConfigurationError(f"setting up the embedded cluster failed: {res.stderr.strip()}")
        return res.stdout

    def _ensure_database(self, state: State) -> None:
        exists = self._psql(state, "postgres", f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE}'")
        if not exists.strip():
            self._psql(state, "postgres", f"CREATE DATABASE {DATABASE}")
        # The embedded cluster is the CLI's own: it also brings the extension to the
        # installed release (a no-op when it is there already).
        self._psql(state, DATABASE, "SET client_min_messages = warning; "
                   "CREATE EXTENSION IF NOT EXISTS thanosql CASCADE; ALTER EXTENSION thanosql UPDATE; "
                   "CREATE EXTENSION IF NOT EXISTS pg_cron")

    def _start_proxy(self, state: State) -> None:
        if not _port_free(state.proxy_port) and not os.environ.get("THANOSQL_PROXY_PORT"):
            # the saved port is in the kernel's ephemeral range: a client socket may hold it
            state.proxy_port = _free_port(state.port + 1)
            self._save_state(state)
        self._spawn_proxy(state, listen_port=state.proxy_port, upstream_port=state.port,
                          pid_file=self.proxy_pid, log_file=self.proxy_log)

    def _spawn_proxy(self, state: State, *, listen_port: int, upstream_port: int, pid_file: Path,
                     log_file: Path) -> None:
        exe = Path(sys.executable).parent / "thanosql-proxy"
        cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "thanosql_pg.proxy.server"]
        listen = "0.0.0.0" if state.listen != "127.0.0.1" else "127.0.0.1"
        # Upstream over TCP, never the Unix socket: the server must authenticate each proxy
        # client by the rules for TCP connections (a password when there is one), not
        # trust the proxy's OS user.
        cmd += ["--listen-host", listen, "--listen-port", str(listen_port),
                "--upstream-host", "127.0.0.1", "--upstream-port", str(upstream_port),
                "--pid-file", str(pid_file),
                # one relaying process per core (up to 4): one Python process relays on one
                # core at a time, and many busy clients need more (bench/proxy_overhead.py)
                "--workers", str(max(1, min(4, os.cpu_count() or 1)))]
        with open(log_file, "ab") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
        pid_file.write_text(str(proc.pid))
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if _port_open(listen_port):
                return
            if proc.poll() is not None:
                break
            time.sleep(0.05)
        raise ConfigurationError("the proxy did not start", hint=f"See {log_file}.")

    # -- the hot standby --------------------------------------------------------
    def start_replica(self, preload: bool | None = None) -> State:
        """The cluster, plus a hot standby streaming from it (its own port and proxy).

        Models are table data, so WAL brings them to the standby: PREDICT, SEARCH IMAGE,
        LIST/DESCRIBE MODEL, EVALUATE and CONVERT's inline form run there; statements
        that write (BUILD, FIT, CONVERT into a table) get PostgreSQL's read-only error.
        """
        state = self.start(preload)
        if state.replica_port is None or state.replica_proxy_port is None:
            state.replica_port = _free_port(state.proxy_port + 1)
            state.replica_proxy_port = _free_port(state.replica_port + 1)
            self._save_state(state)
        assert state.replica_port is not None and state.replica_proxy_port is not None
        if (self.replica / "PG_VERSION").exists() and not self._slot_usable(state):
            # The primary no longer keeps the WAL this standby needs (it was made before
            # slots, or stayed stopped past max_slot_wal_keep_size): copy it afresh.
            self.stop_replica()
            shutil.rmtree(self.replica)
        if not (self.replica / "PG_VERSION").exists():
            self._base_backup(state)
        if not self.server_running(self.replica):
            self._start_replica_server(state)
        if not self.proxy_running(self.replica_proxy_pid, state.replica_proxy_port):
            if not _port_free(state.replica_proxy_port):
                # the saved port is in the kernel's ephemeral range: a client socket may hold it
                state.replica_proxy_port = _free_port(state.replica_port + 1)
                self._save_state(state)
            self._spawn_proxy(state, listen_port=state.replica_proxy_port, upstream_port=state.replica_port,
                              pid_file=self.replica_proxy_pid, log_file=self.replica_proxy_log)
        return state

    def _start_replica_server(self, state: State) -> None:
        """Start the standby's server on its saved port, or on a free one when a client socket
        now holds it: the ports lie in the kernel's ephemeral range (32768-60999)."""
        assert state.replica_port is not None
        self.replica_log.touch()
        self._chown(self.replica_log)
        for _ in range(3):
            if not _port_free(state.replica_port):
                state.replica_port = _free_port(state.proxy_port + 1)
                self._save_state(state)
            # -p overrides the port the base backup wrote into postgresql.conf
            done = subprocess.run(
                self._server_cmd([str(pg_bindir() / "pg_ctl"), "start", "-w", "-t", "120", "-D",
                                  str(self.replica), "-l", str(self.replica_log),
                                  "-o", f"-p {state.replica_port}"]),
                check=False, stdout=subprocess.DEVNULL,
            )
            if done.returncode == 0:
                return
            if self.server_running(self.replica):
                return
        tail = self.replica_log.read_text(errors="replace").splitlines()[-15:]
        raise ConfigurationError("the standby did not start:\n" + "\n".join(tail),
                                 hint=f"See {self.replica_log}.")

    def _slot_usable(self, state: State) -> bool:
        """Whether the primary still keeps, in the standby's replication slot, every WAL
        segment the standby has yet to replay."""
        status = self._psql(state, "postgres", "SELECT wal_status FROM pg_catalog.pg_replication_slots"
                            f" WHERE slot_name = '{REPLICA_SLOT}'").strip()
        return status in ("reserved", "extended", "unreserved")

    def _base_backup(self, state: State) -> None:
        """A copy of the running cluster that follows it (pg_basebackup -R: standby.signal
        and primary_conninfo), on its own port, through a replication slot: the primary
        keeps the WAL a stopped standby needs, up to max_slot_wal_keep_size (so that a
        forgotten standby cannot fill the disk)."""
        self._psql(state, "postgres",
                   "SELECT pg_catalog.pg_drop_replication_slot(slot_name)"
                   f" FROM pg_catalog.pg_replication_slots WHERE slot_name = '{REPLICA_SLOT}'")
        if self._psql(state, "postgres", "SHOW max_slot_wal_keep_size").strip() == "-1":
            self._psql(state, "postgres", f"ALTER SYSTEM SET max_slot_wal_keep_size = '{REPLICA_WAL_KEEP}'")
            self._psql(state, "postgres", "SELECT pg_catalog.pg_reload_conf()")
        if self.replica.exists():
            shutil.rmtree(self.replica)  # a half-made copy from an interrupted backup
        self.replica.mkdir()
        self._chown(self.replica)
        os.chmod(self.replica, 0o700)
        env = dict(os.environ)
        if os.environ.get("THANOSQL_PASSWORD"):
            env["PGPASSWORD"] = os.environ["THANOSQL_PASSWORD"]
        subprocess.run(
            self._server_cmd([str(pg_bindir() / "pg_basebackup"), "-D", str(self.replica), "-h", "127.0.0.1",
                              "-p", str(state.port), "-U", state.superuser, "-X", "stream", "-R",
                              "-C", "-S", REPLICA_SLOT, "--checkpoint=fast"]),
            check=True, stdout=subprocess.DEVNULL, env=env,
        )
        with open(self.replica / "postgresql.conf", "a") as f:
            f.write(f"""
# --- thanosql hot standby of {self.data} ---
port = {state.replica_port}
hot_standby = on
# A long PREDICT on the standby must not be cancelled because the primary vacuumed
# the rows it reads (the primary keeps them a little longer instead).
hot_standby_feedback = on
""")

    def stop_replica(self) -> None:
        self._stop_proxy(self.replica_proxy_pid)
        if self.server_running(self.replica):
            subprocess.run(
                self._server_cmd([str(pg_bindir() / "pg_ctl"), "stop", "-w", "-m", "fast", "-D",
                                  str(self.replica)]),
                check=True, stdout=subprocess.DEVNULL,
            )

    def drop_replica(self) -> None:
        """Stop the standby, then remove it and its replication slot: the primary keeps no
        WAL for it any more (a later ``start --replica`` copies the cluster afresh)."""
        self.stop_replica()
        state = self.state()
        if state is not None and self.server_running():
            self._psql(state, "postgres",
                       "SELECT pg_catalog.pg_drop_replication_slot(slot_name)"
                       f" FROM pg_catalog.pg_replication_slots WHERE slot_name = '{REPLICA_SLOT}'")
        if self.replica.exists():
            shutil.rmtree(self.replica)

    def stop(self) -> None:
        self.stop_replica()
        self._stop_proxy()
        if self.server_running():
            subprocess.run(
                self._server_cmd([str(pg_bindir() / "pg_ctl"), "stop", "-w", "-m", "fast", "-D",
                                  str(self.data)]),
                check=True, stdout=subprocess.DEVNULL,
            )

    def _stop_proxy(self, pid_file: Path | None = None) -> None:
        pid_file = pid_file or self.proxy_pid
        try:
            pid = int(pid_file.read_text())
            os.kill(pid, signal.SIGTERM)
            for _ in range(100):
                os.kill(pid, 0)
                time.sleep(0.05)
        except (OSError, ValueError):
            pass
        pid_file.unlink(missing_ok=True)

    def status(self) -> dict[str, object]:
        state = self.state()
        info: dict[str, object] = {
            "home": str(self.home),
            "data_dir": str(self.data),
            "socket_dir": str(self.run_dir),
            "files_dir": str(self.files),
            "server_running": self.server_running(),
            "proxy_running": self.proxy_running(),
        }
        if state:
            info.update(server=state.server_uri, proxy=state.proxy_uri, port=state.port,
                        proxy_port=state.proxy_port, superuser=state.superuser, database=DATABASE,
                        preload=self.preloading())
            if state.replica_port is not None:
                info.update(replica=state.replica_uri, replica_proxy=state.replica_proxy_uri,
                            replica_port=state.replica_port, replica_proxy_port=state.replica_proxy_port,
                            replica_running=self.server_running(self.replica),
                            replica_proxy_running=self.proxy_running(self.replica_proxy_pid,
                                                                     state.replica_proxy_port))
        return info


def _uri(user: str, port: int | None) -> str | None:
    return None if port is None else f"postgresql://{user}@127.0.0.1:{port}/{DATABASE}"


def _server_listen_addresses(listen: str) -> str:
    """`listen`, plus 127.0.0.1 where it does not cover loopback: the proxy connects there."""
    addresses = {a.strip() for a in listen.split(",")}
    if addresses & {"*", "0.0.0.0", "127.0.0.1", "localhost"}:
        return listen
    return f"127.0.0.1,{listen}"


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_port(start: int) -> int:
    for port in range(start, start + 200):
        if _port_free(port):
            return port
    raise ConfigurationError(f"no free TCP port in {start}..{start + 199}")
