"""Model versions and name claims, at the catalog level:
every BUILD overwrite and FIT keeps earlier versions, rollback is atomic and
needs MODIFY, a second BUILD of a name fails at once instead of training to
the end, and DELETE during a build is a clean error. Models here are catalog
rows written through the writers BUILD uses; the end-to-end PREDICT-after-
rollback test trains real models (tests/test_training_history.py)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from catalog_rows import add_model
from psycopg import errors


@pytest.fixture
def role(direct: psycopg.Connection) -> Iterator[str]:
    name = f"tq_ver_{uuid.uuid4().hex[:8]}"
    direct.execute(f"CREATE ROLE {name} LOGIN")
    yield name
    direct.execute("DELETE FROM thanosql.models WHERE owner = %s::regrole", (name,))
    direct.execute(f"DROP ROLE {name}")


def chunk(conn: psycopg.Connection, name: str) -> bytes:
    row = conn.execute("SELECT c.data FROM thanosql.models m JOIN thanosql.model_chunks c"
                       " ON c.model_id = m.id AND c.version = m.version WHERE m.name = %s",
                       (name,)).fetchone()
    return bytes(row[0])


def versions(conn: psycopg.Connection, name: str) -> list[int]:
    return [r[0] for r in conn.execute("SELECT version FROM thanosql.model_versions(%s)", (name,))]


def test_overwrite_keeps_versions_and_rollback_restores_one(direct: psycopg.Connection,
                                                            unique_name: str) -> None:
    for payload in (b"first", b"second", b"third"):
        add_model(direct, unique_name, payload, options={"epochs": len(payload)}, overwrite=True)
    kept = direct.execute("SELECT version, current, statement FROM thanosql.model_versions(%s)",
                          (unique_name,)).fetchall()
    assert kept == [(3, True, "BUILD"), (2, False, "BUILD"), (1, False, "BUILD")]
    assert chunk(direct, unique_name) == b"third"
    assert direct.execute("SELECT thanosql.rollback_model(%s, 1)", (unique_name,)).fetchone() == (1,)
    assert chunk(direct, unique_name) == b"first"
    row = direct.execute("SELECT version, options, versions FROM thanosql.describe_model(%s)",
                         (unique_name,)).fetchone()
    assert row[:2] == (1, {"epochs": 5})
    assert [v["version"] for v in row[2]] == [1, 2, 3]
    # a new version after a rollback takes the next number; all three earlier ones are kept (default 3)
    add_model(direct, unique_name, b"fourth", overwrite=True)
    assert versions(direct, unique_name) == [4, 3, 2, 1]
    with pytest.raises(errors.UndefinedObject, match="has no version 9"):
        direct.execute("SELECT thanosql.rollback_model(%s, 9)", (unique_name,))
    direct.execute("SELECT thanosql.delete_model(%s)", (unique_name,))
    assert direct.execute("SELECT count(*) FROM thanosql.model_chunks c WHERE NOT EXISTS"
                          " (SELECT 1 FROM thanosql.models m WHERE m.id = c.model_id)").fetchone() == (0,)


def test_keep_versions_prunes_the_oldest_with_their_weights(direct: psycopg.Connection,
                                                           unique_name: str) -> None:
    direct.execute("SET thanosql.keep_versions = 1")
    try:
        for payload in (b"a", b"b", b"c"):
            add_model(direct, unique_name, payload, overwrite=True)
        assert versions(direct, unique_name) == [3, 2]
        assert direct.execute("SELECT count(*) FROM thanosql.model_chunks c JOIN thanosql.models m"
                              " ON m.id = c.model_id WHERE m.name = %s", (unique_name,)).fetchone() == (2,)
    finally:
        direct.execute("RESET thanosql.keep_versions")
        direct.execute("SELECT thanosql.delete_model(%s)", (unique_name,))


def test_only_modify_rolls_back(direct: psycopg.Connection, server_dsn: str, role: str,
                                unique_name: str) -> None:
    add_model(direct, unique_name, b"one")
    add_model(direct, unique_name, b"two", overwrite=True)
    with psycopg.connect(server_dsn, user=role, autocommit=True) as other:
        with pytest.raises(errors.UndefinedObject):  # cannot even see it
            other.execute("SELECT thanosql.rollback_model(%s, 1)", (unique_name,))
        direct.execute("SELECT thanosql.grant_model(%s, %s, 'USE')", (unique_name, role))
        with pytest.raises(errors.InsufficientPrivilege):
            other.execute("SELECT thanosql.rollback_model(%s, 1)", (unique_name,))
        assert versions(other, unique_name) == [2, 1]
    assert chunk(direct, unique_name) == b"two"
    direct.execute("SELECT thanosql.delete_model(%s)", (unique_name,))


def test_a_second_build_of_a_name_fails_at_once(server_dsn: str, unique_name: str) -> None:
    with psycopg.connect(server_dsn) as first, psycopg.connect(server_dsn, autocommit=True) as second:
        # first: a BUILD that has claimed the name and is still training (its transaction open)
        first.execute("SELECT * FROM thanosql._claim_model(%s, false, false)",
                      (unique_name,))
        start = time.monotonic()
        with pytest.raises(errors.LockNotAvailable, match=f'model "{unique_name}" is being built by another'
                                                          " session") as e:
            second.execute("SELECT * FROM thanosql._claim_model(%s, true, false)",
                           (unique_name,))
        assert time.monotonic() - start < 2
        assert e.value.diag.sqlstate == "55P03"
        first.rollback()
        # the name is free again: the cancelled build left nothing
        assert second.execute("SELECT count(*) FROM thanosql.models WHERE name = %s", (unique_name,)
                              ).fetchone() == (0,)


def test_delete_during_an_overwrite_is_a_clean_error(direct: psycopg.Connection, server_dsn: str,
                                                     unique_name: str) -> None:
    add_model(direct, unique_name, b"v1")
    with psycopg.connect(server_dsn) as building:
        building.execute("SELECT * FROM thanosql._claim_model(%s, true, false)",
                         (unique_name,))
        with pytest.raises(errors.LockNotAvailable, match="is being changed by another session"):
            direct.execute("SELECT thanosql.delete_model(%s)", (unique_name,))
        with pytest.raises(errors.LockNotAvailable):
            direct.execute("SELECT * FROM thanosql._claim_model(%s, true, false)",
                           (unique_name,))
        building.rollback()
    direct.execute("SELECT thanosql.delete_model(%s)", (unique_name,))


def test_wait_true_waits_for_the_other_build(direct: psycopg.Connection, server_dsn: str,
                                             unique_name: str) -> None:
    add_model(direct, unique_name, b"v1")
    with psycopg.connect(server_dsn) as building:
        building.execute("SELECT * FROM thanosql._claim_model(%s, true, false)",
                         (unique_name,))
        with psycopg.connect(server_dsn, autocommit=True) as waiter:
            waiter.execute("SET statement_timeout = '700ms'")
            start = time.monotonic()
            with pytest.raises(errors.QueryCanceled):  # it waited, until the timeout
                waiter.execute("SELECT * FROM thanosql._claim_model(%s, true, true)", (unique_name,))
            assert time.monotonic() - start >= 0.6
        building.rollback()
    direct.execute("SELECT thanosql.delete_model(%s)", (unique_name,))
