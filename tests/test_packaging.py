"""thanosql_pg as a Python package (pyproject.toml): a host that runs only the proxy installs
``.[proxy]``, gets a working ``thanosql-proxy`` and no torch. The install reaches the
package index the way ``make setup`` does (pip's own configuration)."""

from __future__ import annotations

import os
import socket
import subprocess
import time
import tomllib
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

ROOT = Path(__file__).resolve().parent.parent
PY = "/usr/bin/python3"  # a fresh interpreter, as a new host has, not the project's .venv


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def proxy_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    venv = tmp_path_factory.mktemp("proxy-host") / "venv"
    subprocess.run([PY, "-m", "venv", str(venv)], check=True)
    out = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "-c", str(ROOT / "constraints.txt"),
                          f"{ROOT}[proxy]"], capture_output=True, text=True, timeout=600, cwd=venv.parent)
    assert out.returncode == 0, out.stderr[-3000:]
    return venv


def test_the_proxy_extra_installs_no_torch(proxy_venv: Path) -> None:
    py = str(proxy_venv / "bin" / "python")
    for heavy in ("torch", "numpy", "timm", "psycopg"):
        out = subprocess.run([py, "-c", f"import {heavy}"], capture_output=True, text=True)
        assert out.returncode != 0 and "ModuleNotFoundError" in out.stderr, heavy
    out = subprocess.run([py, "-c", "import thanosql_pg.preprocessor as p; print(p.rewrite('LIST MODEL'))"],
                         capture_output=True, text=True, check=True)
    assert "thanosql" in out.stdout


def test_the_proxy_of_that_host_rewrites_for_a_real_server(proxy_venv: Path, server_dsn: str) -> None:
    upstream = conninfo_to_dict(server_dsn)
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    proc = subprocess.Popen([str(proxy_venv / "bin" / "thanosql-proxy"), "--listen-port", str(port),
                             "--upstream-host", str(upstream.get("host", "127.0.0.1")),
                             "--upstream-port", str(upstream["port"])],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                conn = psycopg.connect(host="127.0.0.1", port=port, user=upstream.get("user"),
                                       dbname=upstream.get("dbname", "thanosql"), autocommit=True)
                break
            except psycopg.OperationalError:
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                assert time.monotonic() < deadline, "the proxy did not listen"
                time.sleep(0.2)
        with conn:
            cur = conn.execute("LIST MODEL")  # ThanoSQL: rewritten by this host's proxy
            assert cur.description[0].name == "name"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_every_pin_is_a_dependency_of_some_extra() -> None:
    """constraints.txt holds the exact versions of what pyproject.toml asks for (and what that
    pulls in): a pin nobody asks for is a stale line."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {_name(d) for d in project["dependencies"]}
    for deps in project["optional-dependencies"].values():
        wanted |= {_name(d) for d in deps}
    lines = [line for line in (ROOT / "constraints.txt").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert all("==" in line for line in lines)
    pins = [line.split("==")[0].strip().lower() for line in lines]
    transitive = {"psycopg-binary"}  # psycopg[binary]'s
    assert set(pins) - wanted - transitive == set(), set(pins) - wanted
    assert wanted - set(pins) == set(), "every direct dependency has its pin"


def _name(requirement: str) -> str:
    for sep in ("[", ">", "<", "=", "!", "~", ";", " "):
        requirement = requirement.split(sep)[0]
    return requirement.strip().lower()
