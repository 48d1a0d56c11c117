"""The upgrade harness: databases at a frozen earlier release, running that
release's own Python package.

The SQL of every earlier release is installed with the extension
(extension/frozen/), so ``CREATE EXTENSION thanosql VERSION '0.1.0'`` works on
the newest files. Its Python package is the released source, kept here as
thanosql_pg-<release>.tar.gz (git archive of the release tag): a database
points thanosql.python_lib_dir at a folder holding that package plus a .pth
line naming this virtualenv's site-packages (torch & co.), so its backends run
the old code exactly as the old release did.
"""

from __future__ import annotations

import os
import shutil
import site
import tarfile
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

HERE = Path(__file__).resolve().parent
OLD_RELEASES = ("0.1.0", "0.2.0")


def _readable(root: Path) -> None:
    """The server runs as another OS user: let it read the package."""
    for p in [root, *root.rglob("*")]:
        os.chmod(p, 0o755 if p.is_dir() else 0o644)


@pytest.fixture(scope="session")
def release_libdir() -> Iterator[Callable[[str], str]]:
    """``release_libdir('0.1.0')``: a thanosql.python_lib_dir for that release's package."""
    made: dict[str, str] = {}
    root = Path(tempfile.mkdtemp(prefix="thanosql_releases_", dir="/tmp"))

    def get(release: str) -> str:
        if release not in made:
            target = root / release
            target.mkdir()
            with tarfile.open(HERE / f"thanosql_pg-{release}.tar.gz") as tar:
                tar.extractall(target)  # our own release archive
            (target / "zz-thanosql-venv.pth").write_text("\n".join(site.getsitepackages()) + "\n")
            _readable(root)
            made[release] = str(target)
        return made[release]

    yield get
    shutil.rmtree(root, ignore_errors=True)


class Databases:
    """Scratch databases in the test cluster, dropped at the end."""

    def __init__(self, direct: psycopg.Connection, server_dsn: str) -> None:
        self.direct = direct
        self.base = server_dsn.rsplit("/", 1)[0]
        self.made: list[str] = []

    def create(self, prefix: str, *, release: str | None = None, libdir: str | None = None) -> str:
        """A database with extension thanosql at ``release`` (None: none installed)."""
        name = f"tq_{prefix}_{uuid.uuid4().hex[:8]}"
        self.direct.execute(f"CREATE DATABASE {name}")
        self.made.append(name)
        if libdir is not None:
            self.set_libdir(name, libdir)
        if release is not None:
            with self.connect(name) as conn:
                conn.execute("SET client_min_messages = warning")
                conn.execute(f"CREATE EXTENSION thanosql VERSION '{release}' CASCADE")
        return name

    def set_libdir(self, name: str, libdir: str | None) -> None:
        if libdir is None:
            self.direct.execute(f"ALTER DATABASE {name} RESET thanosql.python_lib_dir")
        else:
            self.direct.execute(f"ALTER DATABASE {name} SET thanosql.python_lib_dir = '{libdir}'")

    def dsn(self, name: str) -> str:
        return f"{self.base}/{name}"

    def connect(self, name: str, **kw: object) -> psycopg.Connection:
        return psycopg.connect(self.dsn(name), autocommit=True, **kw)  # type: ignore[arg-type]

    def drop_all(self) -> None:
        for name in self.made:
            self.direct.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                                (name,))
            self.direct.execute(f"DROP DATABASE IF EXISTS {name}")


@pytest.fixture
def dbs(direct: psycopg.Connection, server_dsn: str) -> Iterator[Databases]:
    d = Databases(direct, server_dsn)
    yield d
    d.drop_all()


# --- the catalog snapshot -------------------------------------------------------------------------
# What an install consists of, by name (OIDs differ between databases): every
# object of the extension with its definition, security and privileges.
SNAPSHOT_QUERIES = {
    "extension": """
        SELECT e.extversion, e.extnamespace::regnamespace::text, e.extrelocatable,
               (SELECT array_agg(c::regclass::text ORDER BY c::regclass::text) FROM unnest(e.extconfig) c),
               e.extcondition
        FROM pg_extension e WHERE e.extname = 'thanosql'""",
    "members": """
        SELECT (pg_identify_object(d.classid, d.objid, d.objsubid)).type,
               (pg_identify_object(d.classid, d.objid, d.objsubid)).identity
        FROM pg_depend d JOIN pg_extension e ON e.oid = d.refobjid
        WHERE e.extname = 'thanosql' AND d.deptype = 'e' ORDER BY 1, 2""",
    "columns": """
        SELECT c.relname, a.attnum, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
               a.attidentity, a.attgenerated, a.attstorage, pg_get_expr(ad.adbin, ad.adrelid),
               col_description(c.oid, a.attnum)
        FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid
        LEFT JOIN pg_attrdef ad ON ad.adrelid = c.oid AND ad.adnum = a.attnum
        WHERE c.relnamespace = 'thanosql'::regnamespace AND a.attnum > 0 AND NOT a.attisdropped
        ORDER BY 1, 2""",
    "relations": """
        SELECT c.relname, c.relkind, c.relrowsecurity, c.relforcerowsecurity, c.relacl::text,
               obj_description(c.oid, 'pg_class')
        FROM pg_class c WHERE c.relnamespace = 'thanosql'::regnamespace ORDER BY 1""",
    "constraints": """
        SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid)
        FROM pg_constraint WHERE connamespace = 'thanosql'::regnamespace ORDER BY 1, 2""",
    "indexes": """
        SELECT indexrelid::regclass::text, pg_get_indexdef(indexrelid)
        FROM pg_index
        WHERE indrelid IN (SELECT oid FROM pg_class WHERE relnamespace = 'thanosql'::regnamespace)
        ORDER BY 1""",
    "policies": """
        SELECT polrelid::regclass::text, polname, polcmd, polpermissive, polroles::regrole[]::text,
               pg_get_expr(polqual, polrelid), pg_get_expr(polwithcheck, polrelid)
        FROM pg_policy
        WHERE polrelid IN (SELECT oid FROM pg_class WHERE relnamespace = 'thanosql'::regnamespace)
        ORDER BY 1, 2""",
    "functions": """
        SELECT p.oid::regprocedure::text, pg_get_function_result(p.oid), pg_get_function_arguments(p.oid),
               l.lanname, p.prosecdef, p.provolatile, p.proparallel, p.proisstrict, p.proconfig,
               p.proacl::text, md5(p.prosrc), p.probin
        FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang
        WHERE p.pronamespace = 'thanosql'::regnamespace ORDER BY 1""",
    "types": """
        SELECT t.typname, t.typtype, format_type(a.atttypid, a.atttypmod), a.attname
        FROM pg_type t LEFT JOIN pg_attribute a ON a.attrelid = t.typrelid AND a.attnum > 0
        WHERE t.typnamespace = 'thanosql'::regnamespace AND t.typtype = 'c'
          AND t.typrelid IN (SELECT oid FROM pg_class WHERE relkind = 'c')
        ORDER BY 1, a.attnum""",
    "schema": """
        SELECT nspname, nspowner::regrole::text, nspacl::text FROM pg_namespace WHERE nspname = 'thanosql'""",
}


def catalog_snapshot(conn: psycopg.Connection) -> dict[str, list[tuple[object, ...]]]:
    return {k: conn.execute(q).fetchall() for k, q in SNAPSHOT_QUERIES.items()}
