"""Issue 10: ALTER EXTENSION thanosql UPDATE from every frozen earlier release
keeps every model (same outputs, owners, grants; still fittable), ends where a
fresh install ends, rolls back whole on failure; the Python package refuses to
run against SQL of another release; dumps of an old release restore, then update."""

from __future__ import annotations

import math
import subprocess
import tempfile
import uuid
from pathlib import Path
from typing import Any

import digits  # tests/digits.py
import psycopg
import pytest
import speech  # tests/speech.py
from psycopg import errors

from .conftest import OLD_RELEASES, Databases, catalog_snapshot

PG_BIN = "/usr/lib/postgresql/15/bin"
NEW = __import__("thanosql_pg").__version__
NOT_READY = errors.ObjectNotInPrerequisiteState  # 55000: package and SQL of different releases
MODELS = "SELECT name, algorithm, owner::text, size_bytes, version FROM thanosql.models ORDER BY name"


def extversion(conn: psycopg.Connection) -> str:
    return conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'thanosql'").fetchone()[0]


def run(conn: psycopg.Connection, thanosql: str) -> list[dict[str, Any]]:
    """ThanoSQL through thanosql.execute(), i.e. the database's own preprocessor and
    entry points: under an old release, the old package's."""
    return [r[0] for r in conn.execute("SELECT j FROM thanosql.execute(%s) AS j", (thanosql,))]


def outputs(conn: psycopg.Connection, m: dict[str, str]) -> dict[str, Any]:
    """What each model answers, in a form that can be compared exactly (vectors rounded
    far below float32 resolution)."""
    out: dict[str, Any] = {}
    out["predict"] = [(r["id"], r["predict_result"]) for r in run(
        conn, f"PREDICT USING {m['image']} OPTIONS (image_col='path')"
              " AS SELECT id, path FROM up_test ORDER BY id")]
    out["evaluate"] = sorted((r["metric"], round(r["score"], 6)) for r in run(
        conn, f"EVALUATE USING {m['image']} OPTIONS (image_col='path', label_col='label')"
              " AS SELECT path, label FROM up_test"))
    out["transcripts"] = [(r["text"], r["predict_result"]) for r in run(
        conn, f"PREDICT USING {m['speech']} OPTIONS (audio_col='audio_path')"
              " AS SELECT audio_path, text FROM up_speech ORDER BY text")]
    run(conn, f"CONVERT USING {m['simclr']} OPTIONS (image_col='path', table_name='up_vectors')"
              " AS SELECT id, path FROM up_test")
    vectors = conn.execute("SELECT id, convert_result::text FROM up_vectors ORDER BY id").fetchall()
    out["vectors"] = [(i, [round(float(x), 5) for x in v.strip("[]").split(",")]) for i, v in vectors]
    conn.execute("DROP TABLE up_vectors")
    query = conn.execute("SELECT path FROM up_test ORDER BY id LIMIT 1").fetchone()[0]
    run(conn, f"CONVERT USING {m['simclr']} OPTIONS (image_col='path', result_col='emb')"
              " AS SELECT * FROM up_test")
    out["search"] = [(r["id"], round(r["search_result"], 5)) for r in run(
        conn, f"SEARCH IMAGE USING {m['simclr']} OPTIONS (search_by='image', search_input='{query}',"
              " emb_col='emb', top_k=5) AS SELECT id, emb FROM up_test")]
    return out


def same(a: Any, b: Any) -> bool:
    """Equal, floats within 1e-4 (the same weights on the same CPU code)."""
    if isinstance(a, float) or isinstance(b, float):
        return math.isclose(a, b, abs_tol=1e-4)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return bool(a == b)


@pytest.fixture
def roles(direct: psycopg.Connection) -> Any:
    made = [f"up_owner_{uuid.uuid4().hex[:6]}", f"up_user_{uuid.uuid4().hex[:6]}"]
    for r in made:
        direct.execute(f"CREATE ROLE {r} LOGIN")
    yield made
    for r in made:
        direct.execute(f"DROP ROLE IF EXISTS {r}")


@pytest.mark.slow
@pytest.mark.parametrize("release", OLD_RELEASES)
def test_update_keeps_every_model(release: str, roles: list[str], dbs: Databases, release_libdir: Any,
                                  cluster: dict) -> None:
    owner, user = roles
    name = dbs.create("upgrade", release=release, libdir=release_libdir(release))
    files = cluster["files_dir"]
    with dbs.connect(name) as su:
        train, test = digits.split(digits.digits(files))
        digits.load_table(su, "up_train", digits.per_class(train, 6))
        digits.load_table(su, "up_test", test[:20])
        speech.load_table(su, "up_speech", speech.english_words(files, 4))
        ckpt_dir = Path(tempfile.mkdtemp(prefix="up_ckpt_", dir="/tmp"))
        ckpt = speech.write_checkpoint(ckpt_dir / "tiny")
        speech.readable(ckpt_dir)  # the server runs as another OS user
        su.execute(f"GRANT SELECT ON up_train, up_test TO {owner}, {user}")
        su.execute(f"GRANT CREATE ON SCHEMA public TO {owner}, {user}")
        models = {"image": "up_image", "speech": "up_speech_model", "simclr": "up_simclr"}
        with dbs.connect(name, user=owner) as o:  # an ordinary role owns the image model
            run(o, "BUILD MODEL up_image USING ConvNeXt_Tiny OPTIONS (image_col='path', label_col='label',"
                   " epochs=1, input_size=32, pretrained=False, batch_size=16)"
                   " AS SELECT path, label FROM up_train")
            o.execute(f"SELECT thanosql.grant_model('up_image', '{user}', 'USE')")
            o.execute("SELECT thanosql.grant_model('up_image', 'public', 'USE')")
        run(su, f"BUILD MODEL up_speech_model USING Wav2Vec2En OPTIONS (audio_col='audio_path',"
                f" text_col='text', base_model='{ckpt}', epochs=2, batch_size=4) AS SELECT * FROM up_speech")
        run(su, "BUILD MODEL up_simclr USING SimCLR OPTIONS (image_col='path', epochs=1, batch_size=32,"
                " input_size=32) AS SELECT path FROM up_train")
        catalog_before = su.execute(MODELS).fetchall()
        before = outputs(su, models)
    # The administrator installs the new release's files (done: the test cluster has them),
    # points the server at the new package, and updates.
    dbs.set_libdir(name, None)
    with dbs.connect(name) as su:
        su.execute("ALTER EXTENSION thanosql UPDATE")
        assert extversion(su) == NEW
        assert su.execute(MODELS).fetchall() == catalog_before
        # 0.3.0's jobs arrive empty; they run in thanosql.jobs_database only, which says so here
        assert su.execute("SELECT count(*) FROM thanosql.jobs").fetchone() == (0,)
        with pytest.raises(NOT_READY, match="background jobs run in database"):
            run(su, "FIT MODEL up_simclr USING up_simclr OPTIONS (image_col='path', epochs=1,"
                    " background=True) AS SELECT path FROM up_train")
        grants = su.execute("SELECT m.name, g.grantee::text, g.privilege FROM thanosql.model_grants g"
                            " JOIN thanosql.models m ON m.id = g.model_id ORDER BY 1, 2").fetchall()
        assert grants == sorted([("up_image", "-", "USE"), ("up_image", user, "USE")], key=lambda g: g[1])
        after = outputs(su, models)
        for key in before:
            assert same(before[key], after[key]), key
        # describe_model names its two histories (metrics_history, epoch_history) and carries
        # the old release's metrics over; the update computed every version's weights hash
        # itself from the stored chunks
        described = su.execute("SELECT * FROM thanosql.describe_model('up_simclr')")
        columns = [c.name for c in described.description]
        assert "metrics_history" in columns and "epoch_history" in columns and "metrics" not in columns
        assert [h["statement"] for h in described.fetchone()[columns.index("metrics_history")]] == ["BUILD"]
        assert su.execute("SELECT count(*) FROM thanosql.model_versions WHERE payload_sha256 IS NULL"
                          " OR payload_sha256 <> thanosql._weights_digest(model_id, version)"
                          ).fetchone() == (0,)
        # every family still trains on from its stored model
        run(su, "FIT MODEL up_speech_model USING up_speech_model OPTIONS (audio_col='audio_path',"
                " text_col='text', epochs=1, batch_size=4) AS SELECT * FROM up_speech")
        run(su, "FIT MODEL up_simclr USING up_simclr OPTIONS (image_col='path', epochs=1, batch_size=32)"
                " AS SELECT path FROM up_train")
    with dbs.connect(name, user=owner) as o:
        fitted = run(o, "FIT MODEL up_image USING up_image OPTIONS (image_col='path', label_col='label',"
                        " epochs=1, batch_size=16) AS SELECT path, label FROM up_train")
        assert fitted[0]["model"] == "up_image" and fitted[0]["rows"] == 60
    with dbs.connect(name, user=user) as u:  # the grant carried over: USE, not MODIFY
        predicted = run(u, "PREDICT USING up_image OPTIONS (image_col='path') AS SELECT path FROM up_test")
        assert len(predicted) == 20
        with pytest.raises(errors.InsufficientPrivilege):
            u.execute("SELECT thanosql.delete_model('up_image')")


@pytest.mark.parametrize("release", OLD_RELEASES)
def test_updated_catalog_equals_a_fresh_install(release: str, dbs: Databases) -> None:
    fresh = dbs.create("fresh", release=NEW)
    updated = dbs.create("updated", release=release)
    with dbs.connect(updated) as conn:
        conn.execute("ALTER EXTENSION thanosql UPDATE")
    with dbs.connect(fresh) as f, dbs.connect(updated) as u:
        a, b = catalog_snapshot(f), catalog_snapshot(u)
    assert a.keys() == b.keys()
    for key in a:
        assert a[key] == b[key], key
    assert a["functions"] and a["policies"] and a["columns"]


@pytest.mark.parametrize("release", OLD_RELEASES)
def test_a_failed_update_leaves_the_old_release_working(release: str, dbs: Databases,
                                                        release_libdir: Any) -> None:
    name = dbs.create("failed", release=release, libdir=release_libdir(release))
    # 0.1.0 names owners (name, defaulting to the session's role); later releases use OIDs
    owner_type = "name" if release == "0.1.0" else "regrole"
    with dbs.connect(name) as su:
        if release == "0.1.0":
            su.execute("INSERT INTO thanosql.models (name, algorithm, family, format) VALUES"
                       " ('kept', 'ConvNeXt_Tiny', 'image_classification', 'test')")
        else:
            su.execute("INSERT INTO thanosql.models (name, algorithm, family, format, owner) VALUES"
                       " ('kept', 'ConvNeXt_Tiny', 'image_classification', 'test', current_user::regrole)")
    # Another session holds a lock the update needs: it fails part-way, after some of its work.
    with dbs.connect(name) as holder, dbs.connect(name) as admin:
        holder.execute("BEGIN")
        holder.execute("LOCK TABLE thanosql.model_grants IN ACCESS SHARE MODE")
        admin.execute("SET lock_timeout = '500ms'")
        with pytest.raises(errors.LockNotAvailable):
            admin.execute("ALTER EXTENSION thanosql UPDATE")
        holder.execute("ROLLBACK")
    with dbs.connect(name) as su:
        assert extversion(su) == release
        assert su.execute("SELECT name, pg_typeof(owner)::text FROM thanosql.models").fetchall() == [
            ("kept", owner_type)]
        assert [r["name"] for r in run(su, "LIST MODEL")] == ["kept"]  # the old release still runs
        su.execute("ALTER EXTENSION thanosql UPDATE")  # and the update goes through once the lock is free
    dbs.set_libdir(name, None)
    with dbs.connect(name) as su:
        assert [r["name"] for r in run(su, "LIST MODEL")] == ["kept"]


@pytest.mark.parametrize("release", OLD_RELEASES)
def test_python_package_and_sql_must_be_one_release(release: str, dbs: Databases,
                                                    release_libdir: Any) -> None:
    # New package, old SQL: every entry point says what to do.
    old_sql = dbs.create("oldsql", release=release)
    with dbs.connect(old_sql) as conn:
        with pytest.raises(NOT_READY, match=f"extension thanosql is {release}") as e:
            conn.execute("SELECT thanosql.rewrite('LIST MODEL')")
        assert "ALTER EXTENSION thanosql UPDATE" in (e.value.diag.message_hint or "")
    # Old package, new SQL.
    new_sql = dbs.create("newsql", release=NEW, libdir=release_libdir(release))
    with dbs.connect(new_sql) as conn:
        with pytest.raises(NOT_READY, match=f"thanosql_pg {release} is installed") as e:
            conn.execute("SELECT thanosql.rewrite('LIST MODEL')")
        assert e.value.diag.message_primary.startswith("thanosql_pg")  # no Python class prefix
    # A session that loaded the old package before the update must reconnect.
    live = dbs.create("live", release=release, libdir=release_libdir(release))
    with dbs.connect(live) as session:
        assert session.execute("SELECT thanosql.rewrite('LIST MODEL')").fetchone()[0].startswith("SELECT")
        dbs.set_libdir(live, None)
        with dbs.connect(live) as admin:
            admin.execute("ALTER EXTENSION thanosql UPDATE")
        with pytest.raises(NOT_READY, match="this session loaded thanosql_pg") as e:
            session.execute("SELECT thanosql.rewrite('LIST MODEL')")
        assert "Reconnect" in (e.value.diag.message_hint or "")
    with dbs.connect(live) as fresh_session:
        rewritten = fresh_session.execute("SELECT thanosql.rewrite('LIST MODEL')").fetchone()[0]
        assert rewritten.startswith("SELECT")


def restore_at_release(dump: bytes, dsn: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "db.dump"
        path.write_bytes(dump)
        listing = subprocess.run([f"{PG_BIN}/pg_restore", "-l", str(path)], capture_output=True, text=True,
                                 check=True).stdout
        kept = [line for line in listing.splitlines() if " SCHEMA - thanosql " not in line]
        assert len(kept) == len(listing.splitlines()) - 1
        (Path(tmp) / "list").write_text("\n".join(kept) + "\n")
        subprocess.run([f"{PG_BIN}/pg_restore", "--exit-on-error", "-L", str(Path(tmp) / "list"), "-d", dsn,
                        str(path)], check=True)


# The catalog rows below are written in 0.1.0's layout (the procedure is the same from any release)
@pytest.mark.parametrize("release", OLD_RELEASES[:1])
def test_dump_of_an_old_release_restores_then_updates(release: str, roles: list[str], dbs: Databases) -> None:
    """Models of several chunks survive pg_dump at the old release, pg_restore into
    the newest files at that release, and the update. Chunks are 1 MiB, so no field
    of the dump comes near PostgreSQL's 1 GB limit, however big the model."""
    owner = roles[0]
    src = dbs.create("dumpsrc", release=release)
    payload = bytes(range(256)) * (4096 * 3 + 100)  # 3 MiB + 25 KiB: 4 chunks
    with dbs.connect(src) as su:
        mid = su.execute(f"INSERT INTO thanosql.models (name, algorithm, family, format, owner) VALUES"
                         f" ('big', 'ConvNeXt_Tiny', 'image_classification', 'test', '{owner}') RETURNING id"
                         ).fetchone()[0]
        for seq, start in enumerate(range(0, len(payload), 1 << 20)):
            su.execute("INSERT INTO thanosql.model_chunks VALUES (%s, %s, %s)",
                       (mid, seq, payload[start:start + (1 << 20)]))
        su.execute("INSERT INTO thanosql.model_grants VALUES (%s, 'public', 'USE')", (mid,))
    dump = subprocess.run([f"{PG_BIN}/pg_dump", "-Fc", dbs.dsn(src)], capture_output=True, check=True).stdout
    # The README's procedure: create the extension at the dump's release, restore
    # everything but schema thanosql (CREATE EXTENSION made it), then update.
    dst = dbs.create("dumpdst", release=release)
    restore_at_release(dump, dbs.dsn(dst))
    with dbs.connect(dst) as su:
        su.execute("ALTER EXTENSION thanosql UPDATE")
        rows = su.execute("SELECT m.name, m.owner::text, count(*), max(octet_length(c.data)),"
                          " string_agg(c.data, ''::bytea ORDER BY c.seq) = %s"
                          " FROM thanosql.models m JOIN thanosql.model_chunks c ON c.model_id = m.id"
                          " GROUP BY 1, 2", (payload,)).fetchall()
        assert rows == [("big", owner, 4, 1 << 20, True)]
        assert su.execute("SELECT grantee::text FROM thanosql.model_grants").fetchall() == [("-",)]
        # and the updated database dumps and restores as the new release
    dump2 = subprocess.run([f"{PG_BIN}/pg_dump", "-Fc", dbs.dsn(dst)], capture_output=True, check=True).stdout
    again = dbs.create("dumpagain")
    subprocess.run([f"{PG_BIN}/pg_restore", "--exit-on-error", "-d", dbs.dsn(again)], input=dump2, check=True)
    with dbs.connect(again) as su:
        assert extversion(su) == NEW
        chunks = su.execute("SELECT count(*), sum(octet_length(data)) FROM thanosql.model_chunks").fetchone()
        assert chunks == (4, len(payload))
        assert su.execute("SELECT owner::text FROM thanosql.models").fetchall() == [(owner,)]
