"""The install scripts never break the machine's apt.

Each test gives apt a throwaway configuration (APT_CONFIG: its own sources
list, sources folder, package lists and cache in a temporary folder; the
machine's trusted keys still verify), so the scripts are tried against a
"machine" whose sources we choose, e.g. one that already has a trixie deb-src
entry with Signed-By, which made every `apt-get update` fail when the old
script added its own line without one. These reach Debian's mirror (a package
registry, as `make setup` does)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "install-pgvector.sh"
CONFLICTING = ("Types: deb-src\nURIs: http://deb.debian.org/debian\nSuites: trixie\nComponents: main\n"
               "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n")
LEGACY = "deb-src http://deb.debian.org/debian trixie main"  # what the old script added


def apt_machine(tmp: Path, sources: dict[str, str]) -> dict[str, str]:
    """A throwaway apt configuration with ``sources`` (file name -> content) in its
    sources folder; returns the environment that selects it."""
    for d in ("parts", "lists/partial", "cache/archives/partial"):
        (tmp / d).mkdir(parents=True, exist_ok=True)
    (tmp / "sources.list").write_text("")
    for name, text in sources.items():
        (tmp / "parts" / name).write_text(text + ("\n" if not text.endswith("\n") else ""))
    (tmp / "apt.conf").write_text(
        f'Dir::Etc::SourceList "{tmp}/sources.list";\nDir::Etc::SourceParts "{tmp}/parts/";\n'
        f'Dir::State::Lists "{tmp}/lists/";\nDir::Cache "{tmp}/cache/";\nAPT::Sandbox::User "root";\n')
    return {**os.environ, "APT_CONFIG": str(tmp / "apt.conf")}


def apt_update(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, text=True, timeout=300)


def listing(tmp: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted((tmp / "parts").iterdir())}


@pytest.mark.skipif(os.geteuid() != 0, reason="apt-get update needs root")
def test_source_comes_from_an_existing_conflicting_entry(tmp_path: Path) -> None:
    env = apt_machine(tmp_path, {"mine.sources": CONFLICTING})
    assert apt_update(env).returncode == 0  # the machine as its owner set it up
    before = listing(tmp_path)
    out = subprocess.run(["bash", str(SCRIPT), "--fetch-only", str(tmp_path / "src")], env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert "from the configured apt sources" in out.stdout
    assert (tmp_path / "src" / "pgvector" / "vector.control").is_file()
    assert listing(tmp_path) == before  # nothing added
    assert apt_update(env).returncode == 0  # and apt still works


@pytest.mark.skipif(os.geteuid() != 0, reason="apt-get update needs root")
def test_source_without_any_entry_uses_a_private_configuration(tmp_path: Path) -> None:
    env = apt_machine(tmp_path, {})
    out = subprocess.run(["bash", str(SCRIPT), "--fetch-only", str(tmp_path / "src")], env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert "private apt configuration" in out.stdout
    assert (tmp_path / "src" / "pgvector" / "vector.control").is_file()
    assert listing(tmp_path) == {}
    assert not any((tmp_path / "lists").glob("*trixie*"))  # the machine's lists are untouched too


@pytest.mark.skipif(os.geteuid() != 0, reason="apt-get update needs root")
def test_the_old_scripts_entry_is_removed(tmp_path: Path) -> None:
    """A machine set up by the old script has both entries, and a broken apt-get update."""
    env = apt_machine(tmp_path, {"mine.sources": CONFLICTING, "thanosql-trixie-src.list": LEGACY})
    broken = apt_update(env)
    assert broken.returncode != 0 and "Signed-By" in broken.stderr
    out = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert listing(tmp_path) == {"mine.sources": CONFLICTING}
    assert apt_update(env).returncode == 0


# --- scripts/install-multicorn.sh: optional, so it never fails setup ----------------------------
@pytest.mark.parametrize("source", ["missing", "junk"])
def test_multicorn_without_source_fails_soft(tmp_path: Path, source: str) -> None:
    """No tarball and no download (or a broken tarball): a clear line, exit 0, nothing installed.
    A throwaway "venv" without multicorn makes the script look for the source."""
    (tmp_path / "venv" / "bin").mkdir(parents=True)
    (tmp_path / "venv" / "bin" / "python").symlink_to("/usr/bin/python3")
    tarball = tmp_path / "multicorn2.tar.gz"
    if source == "junk":
        tarball.write_bytes(b"not a tarball")
    env = {**os.environ, "THANOSQL_VENV": str(tmp_path / "venv"), "MULTICORN_TARBALL": str(tarball),
           "MULTICORN_URL": (tmp_path / "nowhere.tar.gz").as_uri()}
    out = subprocess.run(["bash", str(ROOT / "scripts" / "install-multicorn.sh")], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "the FolderFDW (thanosql_pg.fdw) is unavailable" in out.stdout
    assert ("download failed" if source == "missing" else "cannot unpack") in out.stdout
    assert not list(tmp_path.glob("venv/lib*"))
