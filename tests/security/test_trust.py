"""No function believes who its caller says it is, what hash it names, or what
configuration it brings. Each test is an attack, run as an ordinary role.

- Acting as another role: through a SECURITY DEFINER function the victim calls, through
  an index expression that ANALYZE or REINDEX runs as a superuser, through a trigger.
- Hash confusion: a model that names another's weights hash, after a revoke and after
  a delete.
- Forged configurations for the batch functions.
- A USE grantee writing the owner's history; unbounded history values.
- ``_holder`` naming another role's session.
- ``_work``/``_progress_start`` changing others' shares or rows.
"""

from __future__ import annotations

import hashlib
import io
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import psycopg
import pytest
from catalog_rows import add_model
from PIL import Image
from psycopg import errors

from .conftest import Sentinel

Conn = psycopg.Connection
Connect = Callable[..., psycopg.Connection]
# Trained from scratch on small images: a real BUILD in seconds.
TINY = {"image_col": "img", "label_col": "label", "epochs": 1, "input_size": 32, "pretrained": False,
        "batch_size": 8}


def png(seed: int) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 256, (32, 32), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def images_table(conn: Conn, table: str, n: int = 16) -> None:
    conn.execute(f"CREATE TABLE {table} (id int, img bytea, label int)")
    with conn.cursor() as cur:
        cur.executemany(f"INSERT INTO {table} VALUES (%s, %s, %s)", [(i, png(i), i % 2) for i in range(n)])


def build(conn: Conn, name: str, table: str, **opts: Any) -> None:
    conn.execute("SELECT * FROM thanosql.build_model(%s, 'ConvNeXt_Tiny', %s, %s)",
                 [name, json.dumps({**TINY, **opts}), f"SELECT img, label FROM {table}"])


def predict(conn: Conn, name: str, table: str) -> list[str]:
    return conn.execute(
        "SELECT thanosql.predict_batch(thanosql.prepare('predict', %s, '{\"image_col\": \"img\"}'),"
        f" (SELECT array_agg(to_jsonb(img) ORDER BY id) FROM {table}))", [name]).fetchone()[0]


def session(connect_as: Connect, role: str) -> Conn:
    """A connection as ``role``, with a schema of its own first on its search_path ("$user")."""
    conn = connect_as(role)
    conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{role}"')
    return conn


def owner_of(direct: Conn, name: str) -> str | None:
    row = direct.execute("SELECT owner::text FROM thanosql.models WHERE name = %s", [name]).fetchone()
    return row[0] if row else None


def grants_of(direct: Conn, name: str) -> list[tuple[Any, ...]]:
    return direct.execute("SELECT g.grantee::text, g.privilege FROM thanosql.model_grants g"
                          " JOIN thanosql.models m ON m.id = g.model_id WHERE m.name = %s ORDER BY 1, 2",
                          [name]).fetchall()


def digest(data: bytes) -> str:
    return hashlib.sha256(b"".join(hashlib.sha256(data[i:i + (1 << 20)]).digest()
                                   for i in range(0, len(data), 1 << 20))).hexdigest()


# --- acting as another role ----------------------------------------------------------------------
def test_a_definer_function_acts_as_its_owner_not_as_whoever_calls_it(
        alice: str, mallory: str, connect_as: Connect, direct: Conn, sentinel: Sentinel) -> None:
    """Mallory's SECURITY DEFINER function, called by alice, tried to
    grant itself MODIFY on alice's model by passing session_user as the acting role."""
    a, m = session(connect_as, alice), session(connect_as, mallory)
    name = f"secret_{alice}"
    add_model(a, name)
    m.execute(f"""
        CREATE FUNCTION {mallory}.helpful() RETURNS text LANGUAGE plpgsql SECURITY DEFINER AS $$
        DECLARE out text := '';
        BEGIN
            BEGIN  -- the old way: name the victim as the acting role
                PERFORM thanosql._grant_model('{name}', '{mallory}', 'MODIFY', session_user::regrole);
                out := out || 'impl ran;';
            EXCEPTION WHEN others THEN out := out || SQLSTATE || ';';
            END;
            BEGIN  -- the gate: acts as the role the server sees, this function's owner
                PERFORM thanosql.grant_model('{name}', '{mallory}', 'MODIFY');
                out := out || 'gate ran;';
            EXCEPTION WHEN others THEN out := out || SQLSTATE || ';';
            END;
            RETURN out;
        END $$""")
    m.execute(f"GRANT USAGE ON SCHEMA {mallory} TO {alice}")
    m.execute(f"GRANT EXECUTE ON FUNCTION {mallory}.helpful() TO {alice}")
    outcome = a.execute(f"SELECT {mallory}.helpful()").fetchone()[0]
    assert outcome == "42501;42704;"  # impl: permission denied; gate: the model "does not exist" to mallory
    assert grants_of(direct, name) == []
    # The same gate called by alice herself acts as alice.
    a.execute("SELECT thanosql.grant_model(%s, %s, 'USE')", [name, mallory])
    assert grants_of(direct, name) == [(mallory, "USE")]


@pytest.mark.parametrize("maintenance", ["ANALYZE", "REINDEX TABLE"])
def test_an_index_expression_run_by_a_superuser_changes_no_model(
        maintenance: str, alice: str, mallory: str, connect_as: Connect, direct: Conn,
        sentinel: Sentinel) -> None:
    """An index expression on mallory's table that ANALYZE (as
    autovacuum would, as the bootstrap superuser) or REINDEX evaluates tried to take
    alice's model. Maintenance runs it as the table's owner inside a security-restricted
    operation: the writers refuse there, and would act as mallory anyway."""
    a, m = session(connect_as, alice), session(connect_as, mallory)
    name = f"project_{alice}"
    add_model(a, name)
    table = f"bait_{mallory}"
    m.execute(f"""
        CREATE FUNCTION {mallory}.steal(x int) RETURNS int LANGUAGE plpgsql IMMUTABLE AS $$
        BEGIN
            BEGIN
                PERFORM thanosql._alter_model_owner('{name}', '{mallory}', session_user::regrole);
                RAISE NOTICE 'impl ran';
            EXCEPTION WHEN others THEN RAISE NOTICE 'impl refused: % %', SQLSTATE, SQLERRM;
            END;
            BEGIN
                PERFORM thanosql.alter_model_owner('{name}', '{mallory}');
                RAISE NOTICE 'gate ran';
            EXCEPTION WHEN others THEN RAISE NOTICE 'gate refused: % %', SQLSTATE, SQLERRM;
            END;
            RETURN x;
        END $$""")
    m.execute(f"CREATE TABLE {mallory}.{table} (x int)")
    m.execute(f"INSERT INTO {mallory}.{table} SELECT g FROM generate_series(1, 50) g")
    m.execute(f"CREATE INDEX ON {mallory}.{table} ({mallory}.steal(x))")
    heard: list[str] = []
    direct.add_notice_handler(lambda d: heard.append(d.message_primary or ""))
    try:
        direct.execute(f"{maintenance} {mallory}.{table}")
    finally:
        direct._notice_handlers.clear()
    assert heard, "the index expression did not run"
    assert not any(h.endswith(" ran") for h in heard), heard
    assert any(h.startswith("gate refused: 42501") and "security-restricted" in h for h in heard), heard
    assert owner_of(direct, name) == alice


def test_a_trigger_changes_no_model_for_whoever_fires_it(
        alice: str, mallory: str, connect_as: Connect, direct: Conn, sentinel: Sentinel) -> None:
    """A trigger runs its owner's code as whoever changes the table: mallory's trigger,
    fired by alice's INSERT, must not delete alice's model."""
    a, m = session(connect_as, alice), session(connect_as, mallory)
    name = f"kept_{alice}"
    add_model(a, name)
    table = f"guestbook_{mallory}"
    m.execute(f"CREATE TABLE {mallory}.{table} (msg text)")
    m.execute(f"""
        CREATE FUNCTION {mallory}.trap() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM thanosql.delete_model('{name}');
            RETURN NEW;
        END $$""")
    m.execute(f"CREATE TRIGGER trap BEFORE INSERT ON {mallory}.{table}"
              f" FOR EACH ROW EXECUTE FUNCTION {mallory}.trap()")
    m.execute(f"GRANT USAGE ON SCHEMA {mallory} TO {alice}")
    m.execute(f"GRANT INSERT ON {mallory}.{table} TO {alice}")
    with pytest.raises(errors.InsufficientPrivilege, match="from a trigger"):
        a.execute(f"INSERT INTO {mallory}.{table} VALUES ('hello')")
    assert owner_of(direct, name) == alice


def test_the_implementations_are_not_public(mallory: str, connect_as: Connect) -> None:
    """What takes the acting role as an argument cannot be called by PUBLIC at all."""
    m = session(connect_as, mallory)
    for sql in ("SELECT thanosql._grant_model('x', 'y', 'USE', session_user::regrole)",
                "SELECT thanosql._model_write(1, 'a', 'f', '{}', NULL, NULL, 'x', 'BUILD', 1,"
                " session_user::regrole)",
                "SELECT thanosql._holder('x', session_user::regrole)"):
        with pytest.raises(errors.InsufficientPrivilege, match="permission denied for function"):
            m.execute(sql)


# --- the weights hash ----------------------------------------------------------------------------
@pytest.fixture
def alices_model(alice: str, connect_as: Connect) -> Iterator[dict[str, Any]]:
    a = session(connect_as, alice)
    table = f"{alice}.imgs"
    images_table(a, table)
    name = f"real_{alice}"
    build(a, name, table)
    a.execute(f"GRANT USAGE ON SCHEMA {alice} TO PUBLIC")  # the images are no secret; the model is
    a.execute(f"GRANT SELECT ON {table} TO PUBLIC")
    sha = a.execute("SELECT v.payload_sha256 FROM thanosql.models m JOIN thanosql.model_versions v"
                    " ON v.model_id = m.id AND v.version = m.version WHERE m.name = %s", [name]).fetchone()[0]
    yield {"name": name, "table": table, "sha": sha, "conn": a}


@pytest.mark.parametrize("then", ["revoke", "delete"])
def test_a_model_cannot_name_another_models_weights(
        then: str, alices_model: dict[str, Any], mallory: str, connect_as: Connect, direct: Conn,
        sentinel: Sentinel) -> None:
    """Bob read alice's weights hash while he had USE, then wrote a model of his
    own that named it, with one byte of payload; the server mapped alice's cached file for
    it. Now the hash is computed by the server from the bytes it stores."""
    a, m = alices_model["conn"], session(connect_as, mallory)
    name, sha = alices_model["name"], alices_model["sha"]
    a.execute("SELECT thanosql.grant_model(%s, %s, 'USE')", [name, mallory])
    expected = predict(a, name, alices_model["table"])
    assert predict(m, name, alices_model["table"]) == expected  # the cache file now exists
    assert m.execute("SELECT v.payload_sha256 FROM thanosql.model_versions v JOIN thanosql.models x"
                     " ON x.id = v.model_id WHERE x.name = %s", [name]).fetchone()[0] == sha
    if then == "revoke":
        a.execute("SELECT thanosql.revoke_model(%s, %s, 'USE')", [name, mallory])
    else:
        a.execute("SELECT thanosql.delete_model(%s)", [name])
    # No writer PUBLIC can call takes a hash.
    mine = f"copy_{mallory}"
    mid = m.execute("SELECT model_id FROM thanosql._claim_model(%s, false, false)", [mine]).fetchone()[0]
    with pytest.raises(errors.InsufficientPrivilege):
        m.execute("SELECT thanosql._model_write(%s, 'ConvNeXt_Tiny', 'image_classification', %s, '[0, 1]',"
                  " 'integer', 'safetensors', 'BUILD', 1, session_user::regrole)",
                  [mid, json.dumps(TINY)])
    m.execute("SELECT thanosql._write_model(%s, 'ConvNeXt_Tiny', 'image_classification', %s, '[0, 1]',"
              " 'integer', 'safetensors', 'BUILD', 1)", [mid, json.dumps(TINY)])
    m.execute("SELECT thanosql._put_model_chunk(%s, 0, '\\x00')", [mid])
    made = m.execute("SELECT thanosql._seal_model(%s)", [mid]).fetchone()[0]
    assert made == digest(b"\x00") != sha
    # A sealed version takes no more weights.
    with pytest.raises(errors.ObjectNotInPrerequisiteState, match="sealed"):
        m.execute("SELECT thanosql._put_model_chunk(%s, 1, '\\x00')", [mid])
    # Her model is her one byte: it cannot load, and never answers with alice's weights.
    with pytest.raises(psycopg.Error) as e:
        predict(m, mine, alices_model["table"])
    assert e.value.sqlstate != "00000"
    m.execute("SELECT thanosql.delete_model(%s)", [mine])


def test_chunks_are_whole_mebibytes_and_a_version_is_sealed_once(
        mallory: str, connect_as: Connect) -> None:
    m = session(connect_as, mallory)
    name = f"odd_{mallory}"
    mid = m.execute("SELECT model_id FROM thanosql._claim_model(%s, false, false)", [name]).fetchone()[0]
    m.execute("SELECT thanosql._write_model(%s, 'a', 'f', '{}', NULL, NULL, 'x', 'BUILD', 1)", [mid])
    m.execute("SELECT thanosql._put_model_chunk(%s, 0, '\\x0102')", [mid])
    m.execute("SELECT thanosql._put_model_chunk(%s, 1, '\\x03')", [mid])
    with pytest.raises(errors.InvalidParameterValue, match="incomplete"):  # chunk 0 is short
        m.execute("SELECT thanosql._seal_model(%s)", [mid])
    with pytest.raises(errors.InvalidParameterValue):
        m.execute("SELECT thanosql._put_model_chunk(%s, 2, %s)", [mid, b"\0" * ((1 << 20) + 1)])


# --- forged configurations -----------------------------------------------------------------------
def test_batch_functions_take_only_what_prepare_decided(
        alices_model: dict[str, Any], mallory: str, connect_as: Connect, direct: Conn,
        sentinel: Sentinel) -> None:
    """Prepare refuses batch_size 100000, but predict_batch took any cfg it was
    handed (batch_size, device, modality...). Now it takes a handle that prepare issued,
    in this session, to this role."""
    a, name, table = alices_model["conn"], alices_model["name"], alices_model["table"]
    cfg = a.execute("SELECT thanosql.prepare('predict', %s, '{\"image_col\": \"img\"}')",
                    [name]).fetchone()[0]
    assert set(cfg) == {"handle", "input_col"}
    forged = {"model": name, "model_id": 1, "version": 1, "statement": "predict", "input_col": "img",
              "input_option": "image_col", "modality": "image", "batch_size": 100000, "device": "cpu"}
    values = f"(SELECT array_agg(to_jsonb(img)) FROM {table})"
    for bad in (forged, {**forged, "handle": "guessed"}, {"handle": None}):
        with pytest.raises(errors.InvalidParameterValue, match=r"not made by thanosql\.prepare"):
            a.execute(f"SELECT thanosql.predict_batch(%s::jsonb, {values})", [json.dumps(bad)])
    # A real handle, with forged fields beside it: the stored configuration wins.
    tampered = {**cfg, "batch_size": 100000, "device": "cuda:7", "statement": "convert"}
    got = a.execute(f"SELECT thanosql.predict_batch(%s::jsonb, {values})",
                    [json.dumps(tampered)]).fetchone()[0]
    assert len(got) == 16
    # Not for another session, nor for another role of this one.
    with pytest.raises(errors.InvalidParameterValue):
        session(connect_as, mallory).execute(f"SELECT thanosql.predict_batch(%s::jsonb, {values})",
                                             [json.dumps(cfg)])
    with direct.transaction(force_rollback=True):
        handle = direct.execute("SELECT thanosql.prepare('predict', %s, '{\"image_col\": \"img\"}')",
                                [name]).fetchone()[0]
        direct.execute(f'SET LOCAL ROLE "{mallory}"')
        with pytest.raises(errors.InvalidParameterValue), direct.transaction():
            direct.execute(f"SELECT thanosql.predict_batch(%s::jsonb, {values})", [json.dumps(handle)])
    # The wrong batch function for a handle.
    with pytest.raises(errors.InvalidParameterValue, match="prepare\\('convert'"):
        a.execute(f"SELECT thanosql.convert_batch(%s::jsonb, {values})", [json.dumps(cfg)])


def test_many_values_in_one_call_are_run_in_prepared_batches(alices_model: dict[str, Any]) -> None:
    """However many values a caller passes, the model sees batch_size of them at a time: the
    answers are those of small batches."""
    a, name, table = alices_model["conn"], alices_model["name"], alices_model["table"]
    whole = a.execute(
        "SELECT thanosql.predict_batch(thanosql.prepare('predict', %s,"
        " '{\"image_col\": \"img\", \"batch_size\": 3}'),"
        f" (SELECT array_agg(to_jsonb(img) ORDER BY id) FROM {table}))", [name]).fetchone()[0]
    assert whole == predict(a, name, table)


# --- the history ---------------------------------------------------------------------------------
def test_a_use_grantee_writes_no_history(alices_model: dict[str, Any], mallory: str, connect_as: Connect,
                                         direct: Conn) -> None:
    """A USE grantee added forged rows to the owner's metrics history."""
    a, m, name = alices_model["conn"], session(connect_as, mallory), alices_model["name"]
    mid = a.execute("SELECT id FROM thanosql.models WHERE name = %s", [name]).fetchone()[0]
    a.execute("SELECT thanosql.grant_model(%s, %s, 'USE')", [name, mallory])
    history = "SELECT count(*) FROM thanosql.model_metrics WHERE model_id = %s"
    before = direct.execute(history, [mid]).fetchone()
    with pytest.raises(errors.InsufficientPrivilege, match="record the metrics"):
        m.execute("SELECT thanosql._write_metrics(%s, 'BUILD', 1000000, '{\"note\": \"forged\"}')", [mid])
    with pytest.raises(errors.InsufficientPrivilege):
        m.execute("SELECT thanosql._write_epochs(%s, '[{\"epoch\": 1}]')", [mid])
    # Her EVALUATE answers, and is not recorded in alice's history.
    rows = m.execute("SELECT * FROM thanosql.evaluate(%s,"
                     " '{\"image_col\": \"img\", \"label_col\": \"label\"}',"
                     f" 'SELECT img, label FROM {alices_model['table']}')", [name]).fetchall()
    assert ("Rows", 16.0) in rows
    after = direct.execute(history, [mid]).fetchone()
    assert after == before
    # The owner's EVALUATE is recorded.
    a.execute("SELECT * FROM thanosql.evaluate(%s, '{\"image_col\": \"img\", \"label_col\": \"label\"}',"
              f" 'SELECT img, label FROM {alices_model['table']}')", [name])
    assert direct.execute("SELECT count(*) FROM thanosql.model_metrics WHERE model_id = %s",
                          [mid]).fetchone()[0] == before[0] + 1


def test_history_values_are_bounded(alice: str, connect_as: Connect) -> None:
    """Two 140 MB jsonb values made the owner's DESCRIBE MODEL fail for good."""
    a = session(connect_as, alice)
    name = f"hist_{alice}"
    mid = add_model(a, name)
    with pytest.raises(errors.ProgramLimitExceeded, match="metrics"):
        a.execute("SELECT thanosql._write_metrics(%s, 'EVALUATE', 1,"
                  " jsonb_build_object('x', repeat('y', 200000)))", [mid])
    with pytest.raises(errors.InvalidParameterValue):
        a.execute("SELECT thanosql._write_metrics(%s, 'NOTE', 1, '{}')", [mid])
    assert a.execute("SELECT name FROM thanosql.describe_model(%s)", [name]).fetchone() == (name,)


# --- who holds a name ----------------------------------------------------------------------------
def test_holder_names_a_session_only_to_whoever_may_see_it(
        alice: str, mallory: str, connect_as: Connect, direct: Conn, server_dsn: str) -> None:
    """The 55P03 message named another role's session, role and statement."""
    a = session(connect_as, alice)
    table = f"{alice}.many"
    images_table(a, table, n=64)
    name = f"busy_{alice}"
    building = session(connect_as, alice)
    pid = building.execute("SELECT pg_backend_pid()").fetchone()[0]
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            build(building, name, table, epochs=500)
        except psycopg.Error as e:
            outcome["error"] = e.sqlstate

    worker = threading.Thread(target=run)
    worker.start()
    try:
        deadline = time.monotonic() + 60
        while not direct.execute("SELECT 1 FROM thanosql.progress WHERE pid = %s AND phase = 'train'",
                                 [pid]).fetchone():
            assert time.monotonic() < deadline and worker.is_alive(), outcome
            time.sleep(0.1)
        with pytest.raises(errors.LockNotAvailable) as seen_by_mallory:
            session(connect_as, mallory).execute("SELECT * FROM thanosql._claim_model(%s, false, false)",
                                                 [name])
        assert "(session" not in str(seen_by_mallory.value), seen_by_mallory.value
        with pytest.raises(errors.LockNotAvailable) as seen_by_alice:
            a.execute("SELECT * FROM thanosql._claim_model(%s, false, false)", [name])
        assert f"session {pid}" in str(seen_by_alice.value)
    finally:
        direct.execute("SELECT pg_cancel_backend(%s)", [pid])
        worker.join(60)
    assert outcome.get("error") == "57014"


def test_no_session_can_mark_itself_busy_or_write_progress(mallory: str, connect_as: Connect) -> None:
    """_work(true) from idle sessions shrank everyone's thread share, and a fake
    progress row made _holder name the attacker's session. Those writers are no longer SQL."""
    m = session(connect_as, mallory)
    for sql in ("SELECT thanosql._work(true)", "SELECT thanosql._progress_start('BUILD', 'x')",
                "SELECT thanosql._progress_update('x', 1, 1, 1, 1, 0, 0, 0)",
                "SELECT thanosql._progress_end()"):
        with pytest.raises(errors.UndefinedFunction):
            m.execute(sql)
    # Calling the C symbol through SQL needs CREATE FUNCTION ... LANGUAGE C: superusers only.
    with pytest.raises(errors.InsufficientPrivilege):
        m.execute(f"CREATE FUNCTION {mallory}.busy_" + uuid.uuid4().hex[:6] + "(int) RETURNS int"
                  " AS '$libdir/thanosql', 'thanosql_busy' LANGUAGE C")


def test_server_side_rewrites_are_bounded(mallory: str, connect_as: Connect, sentinel: Sentinel) -> None:
    """The proxy bounds what it lexes (--max-rewrite-tokens); thanosql.execute and
    thanosql.rewrite, which lex inside the backend, do too: 4 MB of PREDICT USING m AS
    SELECT 1,1,... is a 54000 error, and the backend does not balloon."""
    m = connect_as(mallory)
    pid = m.execute("SELECT pg_backend_pid()").fetchone()[0]
    for fn in ("thanosql.execute", "thanosql.rewrite"):
        start = time.monotonic()
        with pytest.raises(errors.ProgramLimitExceeded, match="too long to rewrite"):
            m.execute(f"SELECT * FROM {fn}('PREDICT USING m AS SELECT ' || repeat('1,', 2000000) || '1')")
        assert time.monotonic() - start < 20
    peak_kb = next(int(line.split()[1]) for line in open(f"/proc/{pid}/status")
                   if line.startswith("VmHWM:"))
    assert peak_kb < 600 * 1024, f"the backend peaked at {peak_kb // 1024} MB"
    assert m.execute("SELECT 1").fetchone() == (1,)


def test_a_seal_waits_for_chunks_still_being_written(mallory: str, connect_as: Connect) -> None:
    """A chunk put by a transaction that commits after the seal started could land in a
    sealed version, whose hash and size then named other bytes: the seal now waits for it."""
    writer, sealer = session(connect_as, mallory), session(connect_as, mallory)
    name = f"race_{mallory}"
    mid = sealer.execute("SELECT model_id FROM thanosql._claim_model(%s, false, false)", [name]).fetchone()[0]
    sealer.execute("SELECT thanosql._write_model(%s, 'a', 'f', '{}', NULL, NULL, 'x', 'BUILD', 1)", [mid])
    first = b"A" * (1 << 20)
    sealer.execute("SELECT thanosql._put_model_chunk(%s, 0, %s)", [mid, first])
    outcome: dict[str, Any] = {}
    with writer.transaction():
        writer.execute("SELECT thanosql._put_model_chunk(%s, 1, '\\x4242')", [mid])
        def seal() -> None:
            outcome["sha"] = sealer.execute("SELECT thanosql._seal_model(%s)", [mid]).fetchone()[0]

        thread = threading.Thread(target=seal)
        thread.start()
        thread.join(1.0)
        assert thread.is_alive(), "the seal did not wait for the uncommitted chunk"
    thread.join(30)
    assert outcome["sha"] == digest(first + b"BB")
    size = sealer.execute("SELECT size_bytes FROM thanosql.model_versions WHERE model_id = %s",
                          [mid]).fetchone()
    assert size == ((1 << 20) + 2,)


def test_history_rows_and_odd_inputs_are_bounded(alice: str, connect_as: Connect) -> None:
    """The number of metrics rows a model keeps is bounded too (DESCRIBE MODEL aggregates
    them all); an empty chunk and a success SQLSTATE for raise_error are refused."""
    a = session(connect_as, alice)
    name = f"many_{alice}"
    mid = add_model(a, name)
    a.execute("SELECT count(thanosql._write_metrics(%s, 'EVALUATE', 1, jsonb_build_object('i', g)))"
              " FROM generate_series(1, 1005) g", [mid])
    kept = a.execute("SELECT count(*), min((metrics->>'i')::int) FROM thanosql.model_metrics"
                     " WHERE model_id = %s", [mid]).fetchone()
    assert kept[0] == 1000
    assert a.execute("SELECT name FROM thanosql.describe_model(%s)", [name]).fetchone() == (name,)
    other = f"empty_{alice}"
    oid = a.execute("SELECT model_id FROM thanosql._claim_model(%s, false, false)", [other]).fetchone()[0]
    a.execute("SELECT thanosql._write_model(%s, 'a', 'f', '{}', NULL, NULL, 'x', 'BUILD', 1)", [oid])
    with pytest.raises(errors.InvalidParameterValue):
        a.execute("SELECT thanosql._put_model_chunk(%s, 0, ''::bytea)", [oid])
    for state in ("00000", "01000", "02000", "ab123", "4250"):
        with pytest.raises(psycopg.Error) as e:
            a.execute("SELECT thanosql.raise_error(%s, 'x')", [state])
        assert e.value.sqlstate == "XX000", state
    with pytest.raises(errors.InsufficientPrivilege):
        a.execute("SELECT thanosql.raise_error('42501', 'x')")


def test_a_version_s_names_and_counts_are_bounded(mallory: str, connect_as: Connect) -> None:
    """What _write_model stores beside options and labels is bounded too: a caller chooses it."""
    m = session(connect_as, mallory)
    mid = m.execute("SELECT model_id FROM thanosql._claim_model(%s, false, false)",
                    [f"names_{mallory}"]).fetchone()[0]
    for algorithm, rows in (("x" * 257, 1), ("ConvNeXt_Tiny", -1)):
        with pytest.raises(errors.InvalidParameterValue, match="at most 256"):
            m.execute("SELECT thanosql._write_model(%s, %s, 'f', '{}', NULL, NULL, 'x', 'BUILD', %s)",
                      [mid, algorithm, rows])
