"""Server paths escaping thanosql.data_dir.

An ordinary role may read files only below thanosql.data_dir. Every path it
gives (image and audio values, base_model, search_input, scan_folder's folder)
is resolved with realpath and checked against that directory before anything
looks at the file: a refused path gets the same error (42501) whether or not
it exists, so errors tell nothing about the rest of the file system. Only
strictly spelled names (timm names, Hugging Face ``org/name``) are looked up
by name; ``facebook/../../../../tmp/x`` is a path. A model's stored
architecture, which its owner can edit in the catalog, must be a plain timm
name: timm would read ``local-dir:/...`` from the disk.

Every attack runs as ``mallory`` (LOGIN + CREATE on the database), against a
folder outside data_dir that really holds what the attack looks for.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest
from PIL import Image

Conn = psycopg.Connection
PREFIX = "p_" + uuid.uuid4().hex[:6]  # this module's models, deleted at its end


def png(seed: int = 0) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 256, (8, 8), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def build(conn: Conn, model: str, algo: str, opts: dict[str, Any], query: str) -> tuple[Any, ...]:
    return conn.execute("SELECT * FROM thanosql.build_model(%s, %s, %s, %s)",
                        [model, algo, json.dumps(opts), query]).fetchone()


def error(fn: Callable[[], Any]) -> psycopg.Error:
    with pytest.raises(psycopg.Error) as ei:
        fn()
    return ei.value


def same_refusal(errors: dict[str, psycopg.Error]) -> None:
    """Every error is 42501, and they read the same once the path each names is taken out:
    whether a refused path exists makes no difference."""
    shapes = set()
    for path, err in errors.items():
        assert err.sqlstate == "42501", (path, err.sqlstate, str(err))
        text = (err.diag.message_primary or "").replace(path, "<path>")
        shapes.add((text.split('"<path>')[0], err.diag.message_detail, err.diag.message_hint))
    assert len(shapes) == 1, shapes


# --- fixtures ----------------------------------------------------------------------------------
@pytest.fixture(scope="module", autouse=True)
def _drop_models(server_dsn: str) -> Iterator[None]:
    """Models stay in the catalog when the roles that built them are dropped: delete this module's."""
    yield
    with psycopg.connect(server_dsn, autocommit=True) as c:
        c.execute("SELECT thanosql.delete_model(name) FROM thanosql.models WHERE name LIKE %s",
                  [PREFIX + "%"])


@pytest.fixture(scope="module")
def data_dir(cluster: dict) -> Path:
    return Path(cluster["files_dir"])


def _readable(path: Path) -> None:
    """For the server's OS user (the tests may run as another)."""
    for p in (path, *path.rglob("*")):
        os.chmod(p, 0o755 if p.is_dir() else 0o644)


@pytest.fixture(scope="module")
def outside(data_dir: Path) -> Iterator[Path]:
    """A folder outside thanosql.data_dir with what an attacker would want read: a timm model
    folder (config.json + weights), an image, a sub-folder to list."""
    from timm import create_model
    from timm.models import _hub

    root = Path("/tmp") / f"thanosql_outside_{uuid.uuid4().hex[:8]}"
    assert os.path.commonpath([root, data_dir.resolve()]) != str(data_dir.resolve())
    _hub.save_for_hf(create_model("test_convnext", pretrained=False, num_classes=2), root / "model")
    (root / "image.png").write_bytes(png())
    (root / "listme" / "cat").mkdir(parents=True)
    (root / "listme" / "cat" / "a.png").write_bytes(png(1))
    _readable(root)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def inside(data_dir: Path, outside: Path) -> Iterator[Path]:
    """A folder below data_dir: a test_convnext model folder (for tiny models), and symlinks
    that lead outside."""
    from timm import create_model
    from timm.models import _hub

    root = data_dir / f"security_{uuid.uuid4().hex[:8]}"
    _hub.save_for_hf(create_model("test_convnext", pretrained=False, num_classes=2), root / "test_convnext")
    (root / "image_link.png").symlink_to(outside / "image.png")
    (root / "model_link").symlink_to(outside / "model")
    _readable(root)
    os.chmod(data_dir, os.stat(data_dir).st_mode | 0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def conn(mallory: str, connect_as: Callable[..., Conn]) -> Conn:
    c = connect_as(mallory)
    c.execute("CREATE TEMP TABLE imgs (x bytea, y text)")
    c.execute("INSERT INTO imgs VALUES (%s, 'a'), (%s, 'b')", [png(0), png(1)])
    return c


def _traversal(data_dir: Path, target: Path) -> str:
    """A hub-style name ('facebook/../../..') that leads from data_dir to ``target``."""
    return "facebook/" + os.path.relpath(target, data_dir / "facebook")


TINY_IMAGE = {"image_col": "x", "label_col": "y", "epochs": 1, "input_size": 32, "batch_size": 4}
TINY_SIMCLR = {"image_col": "x", "epochs": 1, "input_size": 32, "batch_size": 2, "backbone": "test_convnext",
               "embedding_dim": 8}


# --- base_model ----------------------------------------------------------------------------------
@pytest.mark.parametrize("algo", ["ConvNeXt_Tiny", "SimCLR", "Wav2Vec2En"])
def test_base_model_outside_data_dir(conn: Conn, algo: str, data_dir: Path, outside: Path, inside: Path,
                                     sentinel: Any) -> None:
    """Absolute paths, hub-style traversals, symlinks and ~ that lead outside data_dir: one error,
    the same for a folder that exists (a loadable model) and for one that does not."""
    exists, missing = outside / "model", outside / "no_such_model"
    columns = {"ConvNeXt_Tiny": {"image_col": "x", "label_col": "y"}, "SimCLR": {"image_col": "x"},
               "Wav2Vec2En": {"audio_col": "x", "text_col": "y"}}[algo]

    def attempt(value: str) -> psycopg.Error:  # refused before any row is decoded
        return error(lambda: build(conn, PREFIX + uuid.uuid4().hex[:6], algo,
                                   {**columns, "base_model": value}, "SELECT x, y FROM imgs"))

    # value given -> the path the error names: absolute, through a symlink below data_dir,
    # a hub-style traversal (relative: resolved under data_dir), ~
    traversals = (_traversal(data_dir, exists), _traversal(data_dir, missing))
    refused = {str(exists): str(exists), str(missing): str(missing),
               str(inside / "model_link"): str(inside / "model_link"),
               **{v: str(data_dir / v) for v in traversals},
               "~/model": "~/model", "~postgres/model": "~postgres/model",
               "~no_such_user_x/model": "~no_such_user_x/model"}
    same_refusal({shown: attempt(value) for value, shown in refused.items()})
    # below data_dir a role may learn that something does not exist
    assert attempt(str(inside / "no_such_model")).sqlstate == "58P01"
    assert sentinel.alive()


def test_hub_names_are_strict() -> None:
    """Only strictly spelled names are looked up by name; anything else is a path, checked
    (resolve) before anything tests whether it exists."""
    from thanosql_pg.algorithms.shared import weights
    from thanosql_pg.errors import InsufficientPrivilege

    calls: list[tuple[str, bool]] = []

    def refuse(path: str, *, expand_user: bool = False) -> str:
        calls.append((path, expand_user))
        raise InsufficientPrivilege(f'permission denied to read file "{path}"')

    for value in ("facebook/../../../../tmp/x", "hf-hub:../x", "local-dir:/tmp/x", "/tmp/x", "a/b/c",
                  "org/..", "../x", "~/x", "x.pth", ".hidden/x", "org/-x"):
        with pytest.raises(InsufficientPrivilege):
            weights.locate(value, refuse)
        assert calls[-1] == (value, True), value
    for value, kind in (("convnext_tiny.fb_in1k", "name"), ("facebook/wav2vec2-base-960h", "hub"),
                        ("hf-hub:timm/convnext_tiny.fb_in1k", "hub")):
        assert weights.locate(value, refuse)[0] == kind  # refused as a path below data_dir: a name
    assert weights.hub_repo("hf-hub:timm/resnet18.a1_in1k") == "timm/resnet18.a1_in1k"


# --- input files, search_input, scan_folder --------------------------------------------------------
def test_image_paths_outside_data_dir(conn: Conn, outside: Path, inside: Path, sentinel: Any) -> None:
    paths = [str(outside / "image.png"), str(outside / "no_such.png"), str(inside / "image_link.png"),
             "../" * 12 + str(outside / "image.png").lstrip("/")]
    errors = {}
    for p in paths:
        conn.execute("DROP TABLE IF EXISTS paths")
        conn.execute("CREATE TEMP TABLE paths AS SELECT %s::text AS x, 'a' AS y UNION ALL SELECT %s, 'b'",
                     [p, p])
        errors[p] = error(lambda: build(conn, PREFIX + uuid.uuid4().hex[:6], "ConvNeXt_Tiny",
                                        {**TINY_IMAGE, "base_model": str(inside / "test_convnext")},
                                        "SELECT x, y FROM paths"))
    same_refusal({p if p.startswith("/") else str(inside.parent / p): e for p, e in errors.items()})
    assert sentinel.alive()


def test_search_input_outside_data_dir(conn: Conn, outside: Path, inside: Path) -> None:
    model = PREFIX + uuid.uuid4().hex[:6]
    build(conn, model, "SimCLR", TINY_SIMCLR, "SELECT x FROM imgs")
    opts = json.dumps({"search_by": "image", "emb_col": "e"})
    paths = (str(outside / "image.png"), str(outside / "no_such.png"), str(inside / "image_link.png"))
    same_refusal({p: error(lambda p=p: conn.execute("SELECT thanosql.embed_query(%s, %s::jsonb, %s::text)",
                                                    [model, opts, p]))
                  for p in paths})


def test_scan_folder_outside_data_dir(conn: Conn, data_dir: Path, outside: Path, inside: Path) -> None:
    def scan(path: str) -> psycopg.Error:
        return error(lambda: conn.execute("SELECT count(*) FROM thanosql.scan_folder(%s)", [path]).fetchone())

    rel = os.path.relpath(outside / "listme", data_dir)  # ../../... from data_dir
    same_refusal({**{p: scan(p) for p in (str(outside / "listme"), str(outside / "no_such_folder"), "/")},
                  str(data_dir / rel): scan(rel)})
    # a link below data_dir that leads out is not followed
    names = [r[0] for r in conn.execute("SELECT file_name FROM thanosql.scan_folder(%s)", [str(inside)])]
    assert "image_link.png" not in names and "a.png" not in names


# --- stored options ----------------------------------------------------------------------------------
@pytest.mark.parametrize("algo", ["ConvNeXt_Tiny", "SimCLR"])
def test_a_forged_stored_arch_is_refused(conn: Conn, direct: Conn, algo: str, outside: Path,
                                         inside: Path) -> None:
    """The owner can write a model's catalog row; its stored arch is passed to timm, which would
    read 'local-dir:<path>' from the disk and 'hf-hub:<repo>' from the network. On load it must
    be a plain timm architecture."""
    model = PREFIX + uuid.uuid4().hex[:6]
    if algo == "SimCLR":
        build(conn, model, algo, TINY_SIMCLR, "SELECT x FROM imgs")
        use = "SELECT thanosql.convert_batch(thanosql.prepare('convert', %s, '{\"image_col\": \"x\"}'),"
    else:
        build(conn, model, algo, {**TINY_IMAGE, "base_model": str(inside / "test_convnext")},
              "SELECT x, y FROM imgs")
        use = "SELECT thanosql.predict_batch(thanosql.prepare('predict', %s, '{\"image_col\": \"x\"}'),"
    use += " ARRAY[pg_catalog.to_jsonb(%s::bytea)])"
    conn.execute(use, [model, png()])  # the model works as built
    for forged in (f"local-dir:{outside / 'model'}", "hf-hub:timm/test_convnext.r160_in1k",
                   str(outside / "model"), "../../" + str(outside / "model").lstrip("/")):
        direct.execute("UPDATE thanosql.models SET options = options || jsonb_build_object('arch', %s::text)"
                       " WHERE name = %s", [forged, model])
        err = error(lambda: conn.execute(use, [model, png()]))
        assert err.sqlstate == "XX001", (forged, err.sqlstate, str(err))
        assert forged in str(err) and "not a timm model name" in str(err)
