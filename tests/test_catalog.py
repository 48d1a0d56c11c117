"""The model catalog: management statements, ownership and grants, settings,
pg_dump/restore. Models here are catalog rows written as the owning role,
so these tests need no ML stack; training paths are tested per algorithm."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from catalog_rows import add_model
from psycopg import errors

PG_BIN = "/usr/lib/postgresql/15/bin"


@pytest.fixture
def roles(direct: psycopg.Connection) -> Iterator[tuple[str, str]]:
    a, b = (f"tq_role_{uuid.uuid4().hex[:8]}" for _ in range(2))
    for r in (a, b):
        direct.execute(f"CREATE ROLE {r} LOGIN")
    yield a, b
    direct.execute("DELETE FROM thanosql.models WHERE owner IN (%s, %s)", (a, b))
    for r in (a, b):
        direct.execute(f"DROP ROLE {r}")


def test_list_model_columns_and_rows(db: psycopg.Connection, unique_name: str) -> None:
    add_model(db, unique_name)
    cur = db.execute("LIST MODEL")
    assert [c.name for c in cur.description] == ["name", "class_name", "last_updated_utc"]
    rows = {r[0]: r for r in cur.fetchall()}
    assert rows[unique_name][1] == "ConvNeXt_Tiny"
    db.execute(f"DELETE MODEL {unique_name}")
    assert unique_name not in {r[0] for r in db.execute("list models").fetchall()}


def test_describe_model(db: psycopg.Connection, unique_name: str) -> None:
    mid = add_model(db, unique_name)
    db.execute("SELECT thanosql._write_metrics(%s, 'EVALUATE', 10, '{\"Accuracy\": 0.9}')", (mid,))
    cur = db.execute(f"DESCRIBE MODEL {unique_name}")
    row = dict(zip([c.name for c in cur.description], cur.fetchone(), strict=True))
    assert row["algorithm"] == "ConvNeXt_Tiny"
    assert row["options"] == {"epochs": 1}
    assert row["labels"] == [0, 1]
    assert row["size_bytes"] == len(b"\x00weights")
    assert row["metrics_history"][0]["metrics"] == {"Accuracy": 0.9}
    assert row["epoch_history"] == []
    db.execute(f"DROP MODEL {unique_name}")


def test_unknown_model_errors(db: psycopg.Connection) -> None:
    with pytest.raises(errors.UndefinedObject, match='model "no_such_model" does not exist'):
        db.execute("DESCRIBE MODEL no_such_model")
    with pytest.raises(errors.UndefinedObject):
        db.execute("DELETE MODEL no_such_model")
    db.execute("DROP MODEL IF EXISTS no_such_model")  # a notice, not an error


def test_quoted_model_names_keep_case(db: psycopg.Connection) -> None:
    add_model(db, "MixedCase_Model")
    with pytest.raises(errors.UndefinedObject):
        db.execute("DELETE MODEL MixedCase_Model")  # folds to mixedcase_model
    db.execute('DELETE MODEL "MixedCase_Model"')
    left = db.execute("SELECT count(*) FROM thanosql.models WHERE name = 'MixedCase_Model'").fetchone()
    assert left == (0,)


def test_deleting_a_model_deletes_its_weights(db: psycopg.Connection, unique_name: str) -> None:
    mid = add_model(db, unique_name)
    db.execute(f"DELETE MODEL {unique_name}")
    left = db.execute("SELECT count(*) FROM thanosql.model_chunks WHERE model_id = %s", (mid,)).fetchone()
    assert left == (0,)


def test_rolled_back_model_leaves_no_trace(db: psycopg.Connection, unique_name: str) -> None:
    db.execute("BEGIN")
    add_model(db, unique_name)
    db.execute("ROLLBACK")
    left = db.execute("SELECT count(*) FROM thanosql.models WHERE name = %s", (unique_name,)).fetchone()
    assert left == (0,)


def test_models_belong_to_their_owner(cluster: dict, roles: tuple[str, str], unique_name: str) -> None:
    owner, other = roles
    dsn = cluster["proxy"]
    with psycopg.connect(dsn, user=owner, autocommit=True) as a, \
         psycopg.connect(dsn, user=other, autocommit=True) as b:
        mid = add_model(a, unique_name)
        # Invisible to others: not listed, cannot be described or deleted.
        assert unique_name not in {r[0] for r in b.execute("LIST MODEL").fetchall()}
        with pytest.raises(errors.UndefinedObject):
            b.execute(f"DELETE MODEL {unique_name}")
        # Nor can another role take the name.
        with pytest.raises(errors.DuplicateObject, match="belongs to another role"):
            b.execute("SELECT * FROM thanosql._claim_model(%s, true, false)", (unique_name,))
        # Nor write weights into it, directly or through the writer functions.
        with pytest.raises(errors.InsufficientPrivilege, match="permission denied for table"):
            b.execute("INSERT INTO thanosql.model_chunks VALUES (%s, 99, 'x')", (mid,))
        with pytest.raises(errors.InsufficientPrivilege, match="permission denied to write"):
            b.execute("SELECT thanosql._put_model_chunk(%s, 99, 'x')", (mid,))
        # Only the owner grants.
        with pytest.raises(errors.UndefinedObject):
            b.execute("SELECT thanosql.grant_model(%s, %s, 'MODIFY')", (unique_name, other))
        a.execute("SELECT thanosql.grant_model(%s, %s, 'USE')", (unique_name, other))
        assert unique_name in {r[0] for r in b.execute("LIST MODEL").fetchall()}
        with pytest.raises(errors.InsufficientPrivilege, match="permission denied to modify"):
            b.execute(f"DELETE MODEL {unique_name}")
        with pytest.raises(errors.InsufficientPrivilege):
            b.execute("SELECT thanosql.grant_model(%s, %s, 'MODIFY')", (unique_name, other))
        a.execute("SELECT thanosql.grant_model(%s, %s, 'MODIFY')", (unique_name, other))
        b.execute(f"DELETE MODEL {unique_name}")
        assert unique_name not in {r[0] for r in a.execute("LIST MODEL").fetchall()}


def test_revoke(cluster: dict, roles: tuple[str, str], unique_name: str) -> None:
    owner, other = roles
    with psycopg.connect(cluster["server"], user=owner, autocommit=True) as a, \
         psycopg.connect(cluster["server"], user=other, autocommit=True) as b:
        add_model(a, unique_name)
        a.execute("SELECT thanosql.grant_model(%s, 'public')", (unique_name,))
        assert b.execute("SELECT count(*) FROM thanosql.list_models() WHERE name = %s",
                         (unique_name,)).fetchone()[0] == 1
        a.execute("SELECT thanosql.revoke_model(%s, 'public')", (unique_name,))
        assert b.execute("SELECT count(*) FROM thanosql.list_models() WHERE name = %s",
                         (unique_name,)).fetchone()[0] == 0
        with pytest.raises(errors.InvalidParameterValue):
            a.execute("SELECT thanosql.grant_model(%s, 'public', 'ALL')", (unique_name,))


def test_superuser_only_settings(cluster: dict, roles: tuple[str, str]) -> None:
    user = roles[0]
    with psycopg.connect(cluster["server"], user=user, autocommit=True) as conn:
        conn.execute("SELECT thanosql._native_version()")  # loads the module: real settings
        for setting in ("thanosql.python_lib_dir", "thanosql.data_dir"):
            with pytest.raises(errors.InsufficientPrivilege):
                conn.execute(f"SET {setting} = '/tmp'")
        conn.execute("SET thanosql.device = 'cpu'")
        assert conn.execute("SHOW thanosql.device").fetchone()[0] == "cpu"
        with pytest.raises(errors.InvalidName, match="reserved prefix"):
            conn.execute("SET thanosql.misspelled = 1")  # the prefix is reserved


def test_jit_is_off_after_loading(direct: psycopg.Connection) -> None:
    direct.execute("SET jit = on")
    direct.execute("SELECT * FROM thanosql.list_models()")
    direct.execute("SELECT thanosql.rewrite('LIST MODEL')")  # a PL/Python entry point
    assert direct.execute("SHOW jit").fetchone()[0] == "off"


def test_pg_dump_and_restore_carry_models(cluster: dict, direct: psycopg.Connection) -> None:
    src, dst = (f"tq_dump_{uuid.uuid4().hex[:8]}" for _ in range(2))
    weights = bytes(range(256)) * 5000  # two chunks; content must survive
    direct.execute(f"CREATE DATABASE {src}")
    direct.execute(f"CREATE DATABASE {dst}")
    base = cluster["server"].rsplit("/", 1)[0]
    try:
        with psycopg.connect(f"{base}/{src}", autocommit=True) as conn:
            conn.execute("SET client_min_messages = warning")
            conn.execute("CREATE EXTENSION thanosql CASCADE")
            add_model(conn, "dumped", weights)
        dump = subprocess.run([f"{PG_BIN}/pg_dump", "-Fc", f"{base}/{src}"], capture_output=True, check=True)
        subprocess.run([f"{PG_BIN}/pg_restore", "-d", f"{base}/{dst}"], input=dump.stdout, check=True)
        with psycopg.connect(f"{base}/{dst}", autocommit=True) as conn:
            row = conn.execute("SELECT m.name, string_agg(c.data, '' ORDER BY c.seq)"
                               " FROM thanosql.models m JOIN thanosql.model_chunks c ON c.model_id = m.id"
                               " GROUP BY m.name").fetchone()
            assert row == ("dumped", weights)
            # The identity sequence came along too: a new model does not clash.
            add_model(conn, "after_restore")
    finally:
        direct.execute(f"DROP DATABASE IF EXISTS {src}")
        direct.execute(f"DROP DATABASE IF EXISTS {dst}")
