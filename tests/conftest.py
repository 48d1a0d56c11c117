"""Shared fixtures: the embedded cluster (real PostgreSQL + the real extension).

`thanosql start` is idempotent; the session fixture starts the cluster and
proxy if needed and hands tests their libpq URIs.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

ROOT = Path(__file__).resolve().parent.parent
THANOSQL = [sys.executable, "-m", "thanosql_pg.cli"]


@pytest.fixture(scope="session")
def cluster() -> dict:
    # without the preload (new clusters have it): a session reads Python code on first use,
    # which tests/test_family_contract.py's plug-in family relies on; test_preload runs its own
    subprocess.run([*THANOSQL, "start", "--no-preload"], check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    out = subprocess.run([*THANOSQL, "status", "--json"], capture_output=True, text=True, cwd=ROOT,
                         check=False)
    info = json.loads(out.stdout)
    assert info["server_running"] and info["proxy_running"], info
    # The tests build hundreds of models: keep the shared weights cache at 1 GB (the default's
    # 8 GB is a server's, not a test machine's disk)
    with psycopg.connect(info["server"], autocommit=True) as c:
        if c.execute("SHOW thanosql.cache_size").fetchone()[0] != "1GB":
            c.execute("ALTER SYSTEM SET thanosql.cache_size = '1GB'")
            c.execute("SELECT pg_reload_conf()")
    return info


@pytest.fixture(scope="session")
def server_dsn(cluster: dict) -> str:
    return cluster["server"]


@pytest.fixture(scope="session")
def proxy_dsn(cluster: dict) -> str:
    return cluster["proxy"]


@pytest.fixture
def db(proxy_dsn: str) -> Iterator[psycopg.Connection]:
    """An autocommit connection through the proxy."""
    with psycopg.connect(proxy_dsn, autocommit=True) as conn:
        yield conn


@pytest.fixture
def direct(server_dsn: str) -> Iterator[psycopg.Connection]:
    """An autocommit connection straight to the server (no proxy)."""
    with psycopg.connect(server_dsn, autocommit=True) as conn:
        yield conn


@pytest.fixture(scope="module")
def files(cluster: dict) -> Path:
    """Where the server reads the tests' files (thanosql.data_dir)."""
    return Path(cluster["files_dir"])


@pytest.fixture(scope="module")
def px(proxy_dsn: str) -> Iterator[psycopg.Connection]:
    """One connection through the proxy for the module: one backend, torch loaded once."""
    with psycopg.connect(proxy_dsn, autocommit=True) as c:
        yield c


@pytest.fixture(scope="module")
def conn(server_dsn: str, request: pytest.FixtureRequest) -> Iterator[psycopg.Connection]:
    """Straight to the server, for the module: set-up, catalog checks, and at the end the
    clean-up of what the module named with its ``PREFIX``."""
    from catalog_rows import drop_prefixed

    with psycopg.connect(server_dsn, autocommit=True) as c:
        yield c
        drop_prefixed(c, request.module.PREFIX)


@pytest.fixture(scope="module")
def tiny_net(files: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    """test_convnext's folder (tiny_models): base_model for a fast ConvNeXt_Tiny BUILD,
    named with the module's ``PREFIX``."""
    from tiny_models import convnext_folder

    with convnext_folder(files, request.module.PREFIX) as folder:
        yield folder


@pytest.fixture
def unique_name() -> str:
    return "t_" + uuid.uuid4().hex[:10]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: trains real models; minutes on a 2-core CPU")


@pytest.fixture(scope="module")
def replica(cluster: dict) -> Iterator[dict]:
    """A hot standby of the test cluster, with its proxy, for one module; stopped after it."""
    subprocess.run([*THANOSQL, "start", "--replica"], check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    info = json.loads(subprocess.run([*THANOSQL, "status", "--json"], capture_output=True, text=True,
                                     cwd=ROOT, check=False).stdout)
    assert info["replica_running"] and info["replica_proxy_running"], info
    yield info
    # the standby costs a server's memory, and the WAL the primary keeps for it disk: CI does
    # not need it after this module (the next module's start --replica copies the cluster afresh)
    subprocess.run([*THANOSQL, "stop", "--replica", "--drop"], check=True, cwd=ROOT,
                   stdout=subprocess.DEVNULL)
