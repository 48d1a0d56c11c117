"""The `thanosql` console script and the install scripts."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLI = str(ROOT / ".venv" / "bin" / "thanosql")


def run(*args: str, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CLI, *args], capture_output=True, text=True, cwd=ROOT, timeout=120, check=False,
                          **kw)


def test_status_json(cluster: dict) -> None:
    res = run("status", "--json")
    assert res.returncode == 0, res.stderr
    info = json.loads(res.stdout)
    assert info["server"].startswith("postgresql://") and info["proxy"].startswith("postgresql://")
    assert info["server_running"] and info["proxy_running"]


def test_start_is_idempotent(cluster: dict) -> None:
    res = run("start")
    assert res.returncode == 0, res.stderr
    assert cluster["proxy"] in res.stdout


def test_psql_through_the_proxy(cluster: dict) -> None:
    res = run("psql", "-X", "-At", "-c", "LIST MODEL", "-c", "SELECT 40 + 2")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().endswith("42")


def test_psql_marks_error_position(cluster: dict) -> None:
    res = run("psql", "-X", "-c", "BUILD MODEL m USING ConvNeXt_Tiny OPTIONS (epochz=3) AS SELECT 1")
    assert res.returncode == 1
    assert 'unknown option "epochz"' in res.stderr
    # psql prints the statement line and a caret under the bad option.
    line, caret = re.search(r"LINE 1: (.*)\n( *\^)", res.stderr).groups()
    assert line[len(caret) - len("LINE 1: ") - 1:].startswith("epochz")


def test_rewrite_command() -> None:
    res = run("rewrite", "DROP MODEL IF EXISTS m")
    assert res.returncode == 0, res.stderr
    assert "thanosql.delete_model('m', true)" in res.stdout.replace("TRUE", "true")
    res = run("rewrite", "-", input="SELECT 1")
    assert res.stdout.strip() == "SELECT 1"
    res = run("rewrite", "BUILD MODEL m USING Nope AS SELECT 1")
    assert res.returncode == 1 and "unknown algorithm" in res.stderr


def test_dockerfile_uses_the_ci_install_scripts() -> None:
    """Docker cannot run here; make sure the image and CI cannot drift apart."""
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    ci_scripts = re.findall(r"scripts/(install-[\w-]+\.sh)", setup)
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert ci_scripts and all(f"scripts/{s}" in dockerfile for s in ci_scripts)
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    assert "`make test`" in (ROOT / "README.md").read_text()
