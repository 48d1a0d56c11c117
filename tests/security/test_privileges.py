"""An ordinary role cannot reach another role's
models, write the catalog directly, take over or spoof ownership, or make the
extension's functions resolve names through its own search_path.

Models here are catalog rows written through the same SECURITY DEFINER
writers that BUILD uses (training is not needed to test who sees what)."""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Callable

import psycopg
import pytest
from catalog_rows import add_model
from psycopg import errors

from .conftest import Sentinel


def hijack_operators(conn: psycopg.Connection, schema: str) -> None:
    """Operators that say "equal" to everything, first on the search_path."""
    conn.execute(f'CREATE SCHEMA "{schema}"')
    for typ in ("name", "text", "oid", "bigint", "regrole", "integer"):
        fn = f'"{schema}".eq_{typ}'
        conn.execute(f"CREATE FUNCTION {fn}({typ}, {typ}) RETURNS boolean LANGUAGE sql AS 'SELECT true'")
        conn.execute(f'CREATE OPERATOR "{schema}".= (LEFTARG = {typ}, RIGHTARG = {typ}, FUNCTION = {fn})')
        conn.execute(f"CREATE FUNCTION \"{schema}\".ne_{typ}({typ}, {typ}) RETURNS boolean"
                     " LANGUAGE sql AS 'SELECT false'")
        conn.execute(f'CREATE OPERATOR "{schema}".<> (LEFTARG = {typ}, RIGHTARG = {typ},'
                     f' FUNCTION = "{schema}".ne_{typ})')
    conn.execute(f"CREATE FUNCTION \"{schema}\".pg_has_role(name, oid, text) RETURNS boolean"
                 " LANGUAGE sql AS 'SELECT true'")
    conn.execute(f'SET search_path = "{schema}", pg_catalog, public')


@pytest.fixture
def victim(alice: str, connect_as: Callable[..., psycopg.Connection]) -> tuple[str, int]:
    """alice's model, granted USE to nobody."""
    a = connect_as(alice)
    name = f"secret_{alice}"
    return name, add_model(a, name)


def test_operator_hijack_does_not_bypass_row_level_security(
        mallory: str, victim: tuple[str, int], connect_as: Callable[..., psycopg.Connection],
        sentinel: Sentinel) -> None:
    name, mid = victim
    for via in ("direct", "proxy"):
        m = connect_as(mallory, via)
        if via == "direct":
            hijack_operators(m, mallory)
        else:
            m.execute(f'SET search_path = "{mallory}", pg_catalog, public')
        assert m.execute("SELECT count(*) FROM thanosql.models WHERE id = %s", (mid,)).fetchone() == (0,)
        assert m.execute("SELECT count(*) FROM thanosql.model_chunks WHERE model_id = %s",
                         (mid,)).fetchone() == (0,)
        assert name not in {r[0] for r in m.execute("SELECT name FROM thanosql.list_models()")}
        with pytest.raises(errors.UndefinedObject):
            m.execute("SELECT * FROM thanosql.describe_model(%s)", (name,))
        with pytest.raises(errors.UndefinedObject):
            m.execute("SELECT thanosql.delete_model(%s)", (name,))
        with pytest.raises(errors.UndefinedObject):
            m.execute("SELECT thanosql.grant_model(%s, %s, 'MODIFY')", (name, mallory))
        with pytest.raises(errors.UndefinedObject):
            m.execute("SELECT thanosql.prepare('predict', %s, '{}')", (name,))
        with pytest.raises(errors.InsufficientPrivilege):
            m.execute("UPDATE thanosql.models SET owner = %s WHERE id = %s", (mallory, mid))
    assert sentinel.alive()


def test_catalog_tables_are_not_writable_directly(
        mallory: str, victim: tuple[str, int], connect_as: Callable[..., psycopg.Connection]) -> None:
    m = connect_as(mallory)
    name, mid = victim
    # Squatting: reserving future ids with OVERRIDING SYSTEM VALUE, or burning the sequence.
    for sql in (
        "INSERT INTO thanosql.models (id, name, algorithm, family, format) OVERRIDING SYSTEM VALUE"
        " VALUES ((SELECT max(id) + 1 FROM thanosql.models), 'squat', 'x', 'x', 'x')",
        "INSERT INTO thanosql.models (name, algorithm, family, format) VALUES ('squat', 'x', 'x', 'x')",
        "SELECT nextval('thanosql.models_id_seq')",
        "SELECT setval('thanosql.models_id_seq', 1000000)",
        "INSERT INTO thanosql.model_chunks VALUES (1, 99, 'x')",
        "INSERT INTO thanosql.model_grants VALUES (1, 0, 'USE')",
        "INSERT INTO thanosql.model_metrics (model_id, statement, metrics) VALUES (1, 'x', '{}')",
        "DELETE FROM thanosql.model_metrics",
        "TRUNCATE thanosql.model_grants",
    ):
        with pytest.raises(errors.InsufficientPrivilege):
            m.execute(sql)
    # The writers' implementations take the acting role as an argument: PUBLIC cannot
    # execute them, so mallory cannot act as alice by naming her.
    alice = connect_as(mallory).execute(
        "SELECT pg_get_userbyid(owner) FROM thanosql.models WHERE id = %s", (mid,)).fetchone()
    assert alice is None  # not even visible
    owner = name.removeprefix("secret_")
    for sql, args in (
        ("SELECT * FROM thanosql._model_claim('x', false, false, %s::regrole)", (owner,)),
        ("SELECT * FROM thanosql._model_claim(%s, true, false, %s::regrole)", (name, owner)),
        ("SELECT thanosql._model_write(%s, 'a', 'f', '{}', NULL, NULL, 'x', 'BUILD', 1, %s::regrole)",
         (mid, owner)),
        ("SELECT thanosql._record_epochs(%s, '[]', %s::regrole)", (mid, owner)),
        ("SELECT thanosql._record_metrics(%s, 'EVALUATE', 1, '{}', %s::regrole)", (mid, owner)),
        ("SELECT thanosql._rollback_model(%s, 1, %s::regrole)", (name, owner)),
        ("SELECT thanosql._model_put_chunk(%s, 5, 'x', %s::regrole)", (mid, owner)),
        ("SELECT thanosql._model_seal(%s, %s::regrole)", (mid, owner)),
        ("SELECT thanosql._delete_model(%s, false, %s::regrole)", (name, owner)),
        ("SELECT thanosql._grant_model(%s, %s, 'MODIFY', %s::regrole)", (name, mallory, owner)),
        ("SELECT thanosql._alter_model_owner(%s, %s, %s::regrole)", (name, mallory, owner)),
        ("SELECT * FROM thanosql._model_for(%s, %s::regrole, 'USE')", (name, owner)),
        ("SELECT thanosql._holder(%s, %s::regrole)", (name, owner)),
        ("SELECT thanosql._grant_visible_to(%s, 0, %s::regrole)", (mid, owner)),
    ):
        with pytest.raises(errors.InsufficientPrivilege, match="permission denied for function"):
            m.execute(sql, args)
    # Through the gates, she acts as herself: alice's model "does not exist" to her.
    with pytest.raises(errors.InsufficientPrivilege):
        m.execute("SELECT thanosql._write_model(%s, 'a', 'f', '{}', NULL, NULL, 'x', 'BUILD', 1)", (mid,))
    with pytest.raises(errors.DuplicateObject, match="belongs to another role"):
        m.execute("SELECT * FROM thanosql._claim_model(%s, true, false)", (name,))
    with pytest.raises(errors.UndefinedObject):
        m.execute("SELECT thanosql.rollback_model(%s, 1)", (name,))
    with pytest.raises(errors.InsufficientPrivilege):
        m.execute("SELECT thanosql._put_model_chunk(%s, 5, 'x')", (mid,))
    # And a model of her own cannot take alice's name.
    with pytest.raises(errors.DuplicateObject):
        add_model(m, name)


def test_ownership_cannot_be_spoofed_or_taken(
        mallory: str, alice: str, make_role: Callable[[str], str],
        connect_as: Callable[..., psycopg.Connection], direct: psycopg.Connection) -> None:
    a, m = connect_as(alice), connect_as(mallory)
    name = f"shared_{alice}"
    mid = add_model(a, name)
    a.execute("SELECT thanosql.grant_model(%s, %s, 'MODIFY')", (name, mallory))
    # A MODIFY grantee cannot rewrite the owner, nor give the model away, nor pass
    # her own model off as the superuser's.
    with pytest.raises(errors.InsufficientPrivilege):
        m.execute("UPDATE thanosql.models SET owner = %s WHERE id = %s", (mallory, mid))
    with pytest.raises(errors.InsufficientPrivilege, match="only the owner"):
        m.execute("SELECT thanosql.alter_model_owner(%s, %s)", (name, mallory))
    own = f"own_{mallory}"
    add_model(m, own)
    with pytest.raises(errors.InsufficientPrivilege, match="SET ROLE"):
        m.execute("SELECT thanosql.alter_model_owner(%s, 'root')", (own,))
    # The owner may hand a model to a role she belongs to, as with ALTER ... OWNER TO.
    team = make_role("team")
    direct.execute(f'GRANT "{team}" TO "{alice}"')
    a.execute("SELECT thanosql.alter_model_owner(%s, %s)", (name, team))
    owner = direct.execute("SELECT owner::text FROM thanosql.models WHERE id = %s", (mid,)).fetchone()
    assert owner == (team,)
    # Owners are role OIDs: renaming the role keeps its models.
    renamed = f"{team}_renamed"
    direct.execute(f'ALTER ROLE "{team}" RENAME TO "{renamed}"')
    try:
        rows = a.execute("SELECT owner FROM thanosql.describe_model(%s)", (name,)).fetchall()
        assert rows == [(renamed,)]
    finally:
        direct.execute(f'ALTER ROLE "{renamed}" RENAME TO "{team}"')


def test_grants_name_existing_roles_and_are_private(
        mallory: str, alice: str, make_role: Callable[[str], str],
        connect_as: Callable[..., psycopg.Connection], direct: psycopg.Connection) -> None:
    a, m = connect_as(alice), connect_as(mallory)
    name = f"granted_{alice}"
    mid = add_model(a, name)
    # Quoted as PostgreSQL quotes names: "Bob" is Bob, not bob.
    mixed = make_role("Bob")  # created as "Bob_<hex>"
    with pytest.raises(errors.UndefinedObject, match="does not exist"):
        a.execute("SELECT thanosql.grant_model(%s, %s)", (name, mixed))  # folds to lower case
    a.execute("SELECT thanosql.grant_model(%s, %s)", (name, f'"{mixed}"'))
    assert direct.execute("SELECT grantee::text FROM thanosql.model_grants WHERE model_id = %s",
                          (mid,)).fetchall() == [(f'"{mixed}"',)]
    with pytest.raises(errors.UndefinedObject, match="does not exist"):
        a.execute("SELECT thanosql.grant_model(%s, 'no_such_role_at_all')", (name,))
    # Grants are visible to the model's owner and to the grantee, not to everybody.
    seen = a.execute("SELECT count(*) FROM thanosql.model_grants WHERE model_id = %s", (mid,)).fetchone()
    assert seen == (1,)
    assert m.execute("SELECT count(*) FROM thanosql.model_grants").fetchone() == (0,)
    # asking as herself (the gate passes her role, whatever she would like to be)
    assert not m.execute("SELECT thanosql._grant_visible(%s, %s::regrole)", (mid, f'"{mixed}"')).fetchone()[0]
    assert a.execute("SELECT thanosql._grant_visible(%s, %s::regrole)", (mid, f'"{mixed}"')).fetchone()[0]


def test_load_ignores_the_callers_search_path(
        mallory: str, connect_as: Callable[..., psycopg.Connection], sentinel: Sentinel) -> None:
    """A function of the caller's named like a catalog function must not
    steer which Python code the backend loads (it would run as the postgres OS user)."""
    evil = tempfile.mkdtemp(prefix="thanosql_evil_", dir="/tmp")
    marker = os.path.join(evil, "pwned")
    os.chmod(evil, stat.S_IRWXU | stat.S_IRWXG | stat.S_IRWXO)  # the server's OS user can read and write here
    with open(os.path.join(evil, "evil.pth"), "w") as f:
        f.write(f"import os; open({marker!r}, 'w').write('code ran as ' + str(os.getuid()))\n")
    m = connect_as(mallory)
    m.execute(f'CREATE SCHEMA "{mallory}"')
    for fn in ("current_setting(text)", "current_setting(text, boolean)"):
        args = ", ".join(f"a{i} {t.strip()}" for i, t in enumerate(fn[fn.index("(") + 1:-1].split(",")))
        m.execute(f'CREATE FUNCTION "{mallory}".{fn.split("(")[0]}({args}) RETURNS text'
                  f" LANGUAGE sql AS $$SELECT '{evil}'::text$$")
    m.execute(f'SET search_path = "{mallory}", pg_catalog, public')
    # A new session: _load runs now, with mallory's search_path in effect.
    assert m.execute("SELECT thanosql.rewrite('LIST MODEL')").fetchone()[0].startswith("SELECT")
    assert m.execute("SELECT count(*) FROM thanosql.execute('SELECT 1')").fetchone() == (1,)
    assert not os.path.exists(marker)
    assert sentinel.alive()


def test_every_function_pins_its_search_path(direct: psycopg.Connection) -> None:
    rows = direct.execute(
        "SELECT p.oid::regprocedure::text, p.proconfig, p.prosecdef, pg_get_userbyid(p.proowner),"
        " (SELECT rolsuper FROM pg_roles WHERE oid = p.proowner), p.prokind, p.prosrc"
        " FROM pg_proc p JOIN pg_depend d ON d.classid = 'pg_proc'::regclass AND d.objid = p.oid"
        " JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'thanosql' WHERE d.deptype = 'e'"
    ).fetchall()
    assert len(rows) > 30
    procedures = []
    for fn, config, secdef, _owner, owner_super, kind, source in rows:
        if kind == "p":
            # A procedure that commits may not have a SET clause (PostgreSQL refuses the COMMIT):
            # the background jobs' procedures pin the path themselves, first thing, at session
            # level in their worker's own session, and are not SECURITY DEFINER.
            assert config is None and not secdef, fn
            pin = "SELECT pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', false)"
            assert source.lstrip().startswith(f'plpy.execute("{pin}")'), fn
            procedures.append(fn)
            continue
        assert config == ["search_path=pg_catalog, pg_temp"], fn
        if secdef:
            assert owner_super, fn
    assert sorted(procedures) == ["thanosql._run_job(bigint)",
                                  "thanosql._store_job_checkpoint(bigint,integer)"]
    # and nothing else in the schema that PUBLIC could have slipped in
    strays = direct.execute(
        "SELECT p.oid::regprocedure::text FROM pg_proc p WHERE p.pronamespace = 'thanosql'::regnamespace"
        " AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_proc'::regclass"
        " AND d.objid = p.oid AND d.deptype = 'e')").fetchall()
    assert strays == []


def test_schema_created_by_another_role_is_refused(
        mallory: str, connect_as: Callable[..., psycopg.Connection], direct: psycopg.Connection,
        server_dsn: str) -> None:
    """A role with CREATE on a database could make schema thanosql before the
    extension is installed there, and own everything put in it."""
    import uuid

    db = f"tq_squat_{uuid.uuid4().hex[:8]}"
    direct.execute(f'CREATE DATABASE {db}')
    try:
        direct.execute(f'GRANT CREATE ON DATABASE {db} TO "{mallory}"')
        base = server_dsn.rsplit("/", 1)[0]
        with psycopg.connect(f"{base}/{db}", user=mallory, autocommit=True) as m:
            m.execute("CREATE SCHEMA thanosql")
        with psycopg.connect(f"{base}/{db}", autocommit=True) as su:
            su.execute("SET client_min_messages = warning")
            with pytest.raises(errors.InsufficientPrivilege, match='schema "thanosql" belongs to role'):
                su.execute("CREATE EXTENSION thanosql CASCADE")
    finally:
        direct.execute(f"DROP DATABASE IF EXISTS {db}")
