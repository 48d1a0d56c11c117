"""The embedded cluster must not trust connections that arrive through the proxy.

With THANOSQL_PASSWORD set (the Docker mode) the proxy used to connect upstream over the
Unix socket, which pg_hba trusted: every proxy client became the superuser without a
password. These tests start a throwaway cluster in that mode (its own THANOSQL_HOME, free
ports), check who gets in through its proxy and as what, and delete it afterwards.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import errors as pgerr
from psycopg.conninfo import make_conninfo

from thanosql_pg.proxy import protocol as proto

ROOT = Path(__file__).resolve().parents[2]
THANOSQL = [sys.executable, "-m", "thanosql_pg.cli"]
PASSWORD = "s3cret-' pw"  # a quote, to exercise the ALTER ROLE escaping too


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli(env: dict[str, str], *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*THANOSQL, *args], capture_output=True, text=True, cwd=ROOT, env=env,
                          timeout=timeout, check=False)


@pytest.fixture(scope="module")
def cluster_env() -> Iterator[dict[str, str]]:
    """A throwaway embedded cluster with THANOSQL_PASSWORD; yields the CLI's environment."""
    # Under /tmp and world-readable: the server runs as the postgres OS user under root.
    home = tempfile.mkdtemp(prefix="thanosql-auth-", dir="/tmp")
    os.chmod(home, 0o755)
    server_port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("PG")},
        "THANOSQL_HOME": home,
        "THANOSQL_PASSWORD": PASSWORD,
        "THANOSQL_PORT": str(server_port),
        "THANOSQL_PROXY_PORT": str(free_port()),
    }
    try:
        res = cli(env, "start")
        assert res.returncode == 0, res.stdout + res.stderr
        yield env
    finally:
        cli(env, "stop", timeout=120)
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="module")
def status(cluster_env: dict[str, str]) -> dict:
    res = cli(cluster_env, "status", "--json")
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def via_proxy(status: dict, user: str, password: str | None = None) -> psycopg.Connection:
    extra = {"password": password} if password is not None else {}
    dsn = make_conninfo(status["proxy"], user=user, **extra)
    return psycopg.connect(dsn, autocommit=True, connect_timeout=10)


@pytest.fixture(scope="module")
def ordinary_role(status: dict) -> str:
    with via_proxy(status, status["superuser"], PASSWORD) as conn:
        conn.execute("CREATE ROLE plain_user LOGIN PASSWORD 'plain-pw'")
    return "plain_user"


def test_proxy_clients_need_the_password(status: dict) -> None:
    superuser = status["superuser"]
    for password in (None, "wrong"):
        with pytest.raises(psycopg.OperationalError, match="password"):
            via_proxy(status, superuser, password).close()
    with via_proxy(status, superuser, PASSWORD) as conn:
        # The server authenticated a TCP connection (from the proxy), not a Unix socket one.
        row = conn.execute("SELECT rolsuper, inet_client_addr() IS NOT NULL FROM pg_roles "
                           "WHERE rolname = current_user").fetchone()
        assert row == (True, True)
        assert conn.execute("LIST MODELS").description is not None  # and it is still the proxy


def test_no_trust_in_pg_hba(status: dict) -> None:
    lines = [line.split() for line in Path(status["data_dir"], "pg_hba.conf").read_text().splitlines()
             if line.strip() and not line.lstrip().startswith("#")]
    assert all("trust" not in fields for fields in lines), lines
    assert ["host", "all", "all", "all", "scram-sha-256"] in lines


def test_ordinary_role_cannot_become_superuser(status: dict, ordinary_role: str) -> None:
    with pytest.raises(psycopg.OperationalError, match="password"):
        via_proxy(status, ordinary_role).close()
    with pytest.raises(psycopg.OperationalError, match="password"):
        via_proxy(status, status["superuser"], "plain-pw").close()
    with via_proxy(status, ordinary_role, "plain-pw") as conn:
        assert conn.execute("SELECT current_user, rolsuper FROM pg_roles WHERE rolname = current_user"
                            ).fetchone() == (ordinary_role, False)
        with pytest.raises(pgerr.InsufficientPrivilege):
            conn.execute("COPY (SELECT 1) TO PROGRAM 'true'")
        with pytest.raises(pgerr.InsufficientPrivilege):
            conn.execute(f'SET ROLE "{status["superuser"]}"')


def test_cli_still_works(cluster_env: dict[str, str], status: dict) -> None:
    # `thanosql start` again: its own psql goes over the Unix socket (peer authentication).
    res = cli(cluster_env, "start")
    assert res.returncode == 0, res.stderr
    # `thanosql psql` goes through the proxy, so it needs the password like any client.
    res = cli({**cluster_env, "PGPASSWORD": PASSWORD}, "psql", "-X", "-At", "-c", "SELECT 40 + 2")
    assert (res.returncode, res.stdout.strip()) == (0, "42"), res.stderr


def test_query_before_authentication_reaches_the_server_raw(status: dict) -> None:
    with socket.create_connection(("127.0.0.1", status["proxy_port"]), timeout=10) as sock:
        sock.sendall(proto.startup_packet({"user": status["superuser"], "database": status["database"]}))
        reply = sock.recv(65536)
        assert reply[:1] == b"R" and struct.unpack_from("!I", reply, 5)[0] == 10  # SASL
        sock.sendall(proto.message(b"Q", b"LIST MODEL\x00"))
        reply = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65536):
                reply += chunk
        # The server itself refused it: a Query is no answer to its authentication request.
        assert reply[:1] == b"E" and b"C08P01\x00" in reply, reply


def test_start_upgrades_a_cluster_that_trusted_its_socket(cluster_env: dict[str, str], status: dict) -> None:
    """Clusters made before this fix had `local all all trust` and a proxy connected through
    that socket: `thanosql start` switches the socket to peer and restarts the proxy."""
    hba = Path(status["data_dir"], "pg_hba.conf")
    pid_file = Path(status["home"], "run", "proxy.pid")
    hba.write_text("local all all trust\nhost all all all scram-sha-256\n")
    old_pid = pid_file.read_text().strip()
    res = cli(cluster_env, "start")
    assert res.returncode == 0, res.stderr
    assert "trust" not in hba.read_text()
    assert pid_file.read_text().strip() != old_pid
    with pytest.raises(psycopg.OperationalError, match="password"):
        via_proxy(status, status["superuser"]).close()
    with via_proxy(status, status["superuser"], PASSWORD) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
