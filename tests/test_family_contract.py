"""The family contract: a family defined only here works through BUILD, PREDICT and
EVALUATE in the real database, with no file of thanosql_pg touched.

The family ("majority_class": predicts the most frequent label) is a plug-in package
written into a temporary folder, laid out as an installed distribution: the package
(a pure spec in __init__.py that registers itself, the model in model.py) and a
dist-info whose entry point in group ``thanosql_pg.families`` names it. A session
whose ``thanosql.python_lib_dir`` is that folder (a .pth line chains this virtualenv)
finds it the way the server finds any installed plug-in; this process registers it
for the preprocessor the same way (load_plugins with the folder on sys.path).
"""

from __future__ import annotations

import importlib
import os
import shutil
import site
import sys
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest

from thanosql_pg import algorithms
from thanosql_pg.algorithms import registry
from thanosql_pg.errors import FeatureNotAvailable, ThanoSQLError, WrongModelType
from thanosql_pg.preprocessor import rewrite

PACKAGE = "thanosql_fc_majority"

SPEC = '''"""A majority-class family (tests/test_family_contract.py): its spec, pure."""

from dataclasses import dataclass

from thanosql_pg.algorithms import registry as r


@dataclass(frozen=True, kw_only=True)
class MajorityOptions(r.Options):
    """The family's own options, typed: what its model module may read."""

    value_col: str
    label_col: str


VALUE = r.option("value_col", str, "value")
LABEL = r.option("label_col", str, "label")
BATCH = r.batch_size(32, 1000)
LABELLED = r.Columns("value_col", "label_col")

FAMILY = r.register(r.Family(
    name="majority_class",
    model="thanosql_fc_majority.model",
    algorithms={"MajorityClass": {"smoothing": 0}},
    options={
        "build": (VALUE, LABEL, r.epochs(1), r.OVERWRITE, r.DEVICE),
        "predict": (VALUE, BATCH, r.DEVICE),
        "evaluate": (VALUE, LABEL, BATCH, r.DEVICE),
    },
    columns={"build": LABELLED, "predict": r.Columns("value_col"), "evaluate": LABELLED},
    typed=MajorityOptions,
))
'''

MODEL = '''"""A majority-class model: the contract's train and load, and a Predictor."""

from __future__ import annotations

import json
from collections import Counter

from thanosql_pg.algorithms.contract import Trained, check_format

FORMAT = "majority-json-v1"


class Majority:
    def __init__(self, label, labels):
        self.label = label
        self.labels = labels

    def predict(self, rows, reader, opts):
        return [self.label for _ in rows], []

    def evaluate(self, source, opts):
        total = hits = 0
        for batch in source.batches(opts.batch_size, shuffle=False):
            for row in batch:
                total += 1
                hits += row.target == self.label
        return {"Accuracy": hits / total}


def train(algo, opts, source, base=None):
    counts = Counter()
    for batch in source.batches(64, shuffle=False):
        counts.update(row.target for row in batch)
    ((label, n),) = counts.most_common(1)
    source.notice(f"{algo.name}: the majority class is {label}")
    return Trained(payload=json.dumps({"label": label}).encode(), format=FORMAT, labels=sorted(counts),
                   label_type=source.label_type, metrics={"train_accuracy": n / sum(counts.values())})


def load(record, payload, device):
    check_format(record, FORMAT)
    return Majority(json.loads(payload)["label"], list(record.labels or []))
'''


def _forget(family: str) -> None:
    """Take a family registered by this test out of this process's registry again."""
    registry.FAMILIES.pop(family, None)
    for key in [k for k, a in registry.ALGORITHMS.items() if a.family.name == family]:
        del registry.ALGORITHMS[key]


@contextmanager
def registered(spec: registry.Family) -> Iterator[registry.Family]:
    registry.register(spec)
    try:
        yield spec
    finally:
        _forget(spec.name)


@pytest.fixture(scope="module")
def plugin_dir() -> Iterator[Path]:
    """The plug-in, installed into a folder of its own that the server can read."""
    root = Path(tempfile.mkdtemp(prefix="thanosql_family_", dir="/tmp"))
    pkg = root / PACKAGE
    pkg.mkdir()
    (pkg / "__init__.py").write_text(SPEC)
    (pkg / "model.py").write_text(MODEL)
    dist = root / f"{PACKAGE}-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {PACKAGE}\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[{algorithms.ENTRY_POINT_GROUP}]\nmajority = {PACKAGE}\n")
    # the server's Python finds thanosql_pg and its dependencies through this virtualenv
    venv = [p for p in site.getsitepackages() if os.path.isdir(p)]
    chain = "".join(f"import site; site.addsitedir({p!r})\n" for p in venv)
    (root / "zz-thanosql-venv.pth").write_text(chain)
    for p in [root, *root.rglob("*")]:
        os.chmod(p, 0o755 if p.is_dir() else 0o644)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def plugin(plugin_dir: Path) -> Iterator[registry.Family]:
    """This process (the preprocessor) discovers the plug-in like the server: its entry point."""
    sys.path.insert(0, str(plugin_dir))
    try:
        assert PACKAGE in algorithms.load_plugins()
        yield registry.lookup("MajorityClass").family
    finally:
        _forget("majority_class")
        sys.path.remove(str(plugin_dir))
        for name in [m for m in sys.modules if m == PACKAGE or m.startswith(PACKAGE + ".")]:
            del sys.modules[name]
        importlib.invalidate_caches()


@pytest.fixture
def conn(server_dsn: str, plugin_dir: Path) -> Iterator[psycopg.Connection]:
    """A session whose backend loads thanosql_pg from the plug-in's folder (superuser setting)."""
    with psycopg.connect(server_dsn, autocommit=True) as probe:
        preload = probe.execute("SELECT pg_catalog.current_setting('thanosql.preload', true)").fetchone()
    if preload and preload[0] == "on":  # sessions fork with thanosql_pg imported: install plug-ins instead
        pytest.skip("thanosql.preload is on: a session's thanosql.python_lib_dir no longer applies")
    with psycopg.connect(server_dsn, autocommit=True,
                         options=f"-c thanosql.python_lib_dir={plugin_dir}") as c:
        c.execute("SET client_min_messages = warning")
        yield c


def test_the_spec_is_pure_and_registered(plugin: registry.Family) -> None:
    algo = registry.lookup("majorityclass")
    assert algo.name == "MajorityClass" and algo.available and algo.params == {"smoothing": 0}
    assert plugin.name == "majority_class" and plugin.supports("predict") and not plugin.supports("fit")
    assert {o.name for o in registry.options_for("predict")} >= {"value_col", "image_col", "result_col"}
    opts = registry.normalize_options("build", {"value_col": "v", "label_col": "y"}, plugin)
    assert type(opts).__name__ == "MajorityOptions" and (opts.value_col, opts.epochs) == ("v", 1)
    assert plugin.column_names("build", opts) == ("v", "y")


def test_build_predict_evaluate_in_the_database(plugin: registry.Family, conn: psycopg.Connection) -> None:
    table = f"fc_{uuid.uuid4().hex[:8]}"
    model = f"fc_model_{uuid.uuid4().hex[:8]}"
    conn.execute(f"CREATE TABLE {table} (id int, v text, label text)")
    rows = [(i, f"row {i}", "b" if i % 3 == 0 else "a") for i in range(1, 10)]  # 6 a, 3 b
    conn.cursor().executemany(f"INSERT INTO {table} VALUES (%s, %s, %s)", rows)
    try:
        built = conn.execute(rewrite(
            f"BUILD MODEL {model} USING MajorityClass OPTIONS (value_col='v', label_col='label')"
            f" AS SELECT v, label FROM {table}")).fetchall()
        assert built[0][:3] == (model, "MajorityClass", 9)
        assert built[0][-1] == {"train_accuracy": pytest.approx(6 / 9)}
        stored = conn.execute("SELECT family, format, labels FROM thanosql.models WHERE name = %s",
                              [model]).fetchone()
        assert stored == ("majority_class", "majority-json-v1", ["a", "b"])

        predicted = conn.execute(rewrite(
            f"PREDICT USING {model} OPTIONS (value_col='v', result_col='guess')"
            f" AS SELECT id, v FROM {table} ORDER BY id")).fetchall()
        assert [r[0] for r in predicted] == list(range(1, 10)) and {r[-1] for r in predicted} == {"a"}

        metrics = dict(conn.execute(rewrite(
            f"EVALUATE USING {model} OPTIONS (value_col='v') AS SELECT v, label FROM {table}")).fetchall())
        assert metrics == {"Accuracy": pytest.approx(6 / 9), "Rows": 9.0}

        # the spec's own rules hold on the server: an option it lacks, a statement it lacks
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="image_col"):
            conn.execute(f"SELECT * FROM thanosql.evaluate('{model}', '{{\"image_col\": \"v\"}}'::jsonb,"
                         f" 'SELECT v, label FROM {table}')")
        with pytest.raises(psycopg.errors.WrongObjectType, match="CONVERT does not apply"):
            conn.execute(f"SELECT * FROM thanosql.convert('{model}', '{{}}'::jsonb, 'SELECT v FROM {table}',"
                         f" '{table}')")
    finally:
        conn.execute("SELECT thanosql.delete_model(%s, true)", [model])
        conn.execute(f"DROP TABLE IF EXISTS {table}")


def test_an_unimplemented_family_is_registered_but_not_available() -> None:
    spec = registry.Family(name="fc_future", model=None, algorithms={"FutureNet": {}}, options={})
    with registered(spec):
        assert not registry.lookup("FutureNet").available
        with pytest.raises(FeatureNotAvailable, match="algorithm FutureNet is not available") as info:
            rewrite("BUILD MODEL m USING FutureNet AS SELECT 1 AS x")
        assert info.value.sqlstate == "0A000" and info.value.position == len("BUILD MODEL m USING ") + 1
        assert "FutureNet" not in registry.embedding_algorithms("image")


def test_search_by_follows_the_families_modalities() -> None:
    simclr = registry.lookup("SimCLR").family
    registry.check_search_by(simclr, "m", "SimCLR", "image")
    with pytest.raises(FeatureNotAvailable, match="no algorithm in this version searches by audio") as info:
        registry.check_search_by(simclr, "m", "SimCLR", "audio")
    assert "SimCLR models embed images only" in (info.value.hint or "")
    texts = registry.Family(name="fc_texts", model="fc_texts.model", algorithms={"TextEmbedder": {}},
                            options={"convert": (registry.DEVICE,), "search": (registry.DEVICE,)},
                            modalities=("image", "text"))
    with registered(texts):
        assert registry.embedding_algorithms("text") == ["CLIP", "TextEmbedder"]
        with pytest.raises(WrongModelType, match=r'model "m" \(SimCLR\) cannot search by text') as err:
            registry.check_search_by(simclr, "m", "SimCLR", "text")
        assert err.value.sqlstate == "42809" and "Algorithms that search by text: CLIP, TextEmbedder" in (
            err.value.hint or "")
        registry.check_search_by(texts, "t", "TextEmbedder", "text")


def test_a_family_cannot_take_another_one_s_names() -> None:
    clash = registry.Family(name="fc_clash", model=None, algorithms={"simclr": {}}, options={})
    with pytest.raises(ThanoSQLError, match='algorithm "simclr"'):
        registry.register(clash)
    assert "fc_clash" not in registry.FAMILIES
    bad = registry.Family(name="fc_bad", model=None, algorithms={}, options={"fit": ()}, carry_over=("x",))
    with pytest.raises(ThanoSQLError, match="carries over"):
        registry.register(bad)


def test_a_missing_plugin_module_is_a_configuration_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(algorithms.ENVIRONMENT, "thanosql_fc_no_such_family")
    with pytest.raises(ThanoSQLError, match="thanosql_fc_no_such_family") as info:
        algorithms.load_plugins()
    assert info.value.sqlstate == "F0000"


# --- the typed contract: what a family declares is what its code may read ------------------------
def _spec(typed: type[registry.Options], *opts: registry.Option) -> registry.Family:
    return registry.Family(name="fc_typed", model=None, algorithms={"TypedNet": {}},
                           options={"predict": (*opts, registry.DEVICE)}, typed=typed)


def test_registration_refuses_options_and_fields_that_disagree() -> None:
    from dataclasses import dataclass

    @dataclass(frozen=True, kw_only=True)
    class Declared(registry.Options):
        value_col: str

    value = registry.option("value_col", str, "v")
    with registered(_spec(Declared, value)):  # they agree
        opts = registry.normalize_options("predict", {}, registry.FAMILIES["fc_typed"])
        assert isinstance(opts, Declared) and opts.value_col == "v" and opts.device == "auto"
    with pytest.raises(ThanoSQLError, match=r'declares option "extra".*no field'):
        registry.register(_spec(Declared, value, registry.option("extra", int, 1)))
    with pytest.raises(ThanoSQLError, match="takes int values"):
        registry.register(_spec(Declared, registry.option("value_col", int, 1)))

    @dataclass(frozen=True, kw_only=True)
    class Overdeclared(registry.Options):
        value_col: str
        secret: str

    with pytest.raises(ThanoSQLError, match="fields no option declares: secret"):
        registry.register(_spec(Overdeclared, value))
    assert "fc_typed" not in registry.FAMILIES
    with pytest.raises(ThanoSQLError, match="kind"):
        registry.option("x", "str", "v")  # kinds are types, not strings


def test_reading_an_undeclared_option_fails_the_type_check(plugin_dir: Path, tmp_path: Path) -> None:
    """The plug-in's model module passes mypy; the same module reading an option its family
    never declared does not, so the mistake is caught before anything runs."""
    import subprocess

    undeclared = MODEL.replace("opts.batch_size", "opts.batch_sise").replace(
        "def evaluate(self, source, opts):", "def evaluate(self, source, opts: MajorityOptions) -> dict:")
    declared = MODEL.replace(
        "def evaluate(self, source, opts):", "def evaluate(self, source, opts: MajorityOptions) -> dict:")
    header = "from thanosql_fc_majority import MajorityOptions\n"
    root = Path(__file__).resolve().parent.parent  # thanosql_pg's source, typed
    env = {**os.environ, "MYPYPATH": f"{plugin_dir}:{root}"}
    results = {}
    for name, text in (("good", declared), ("bad", undeclared)):
        module = tmp_path / f"{name}_model.py"
        module.write_text(text.replace("from __future__ import annotations\n",
                                       "from __future__ import annotations\n" + header))
        results[name] = subprocess.run(
            [sys.executable, "-m", "mypy", "--follow-imports=silent", "--ignore-missing-imports",
             "--no-incremental", str(module)], capture_output=True, text=True, env=env, check=False,
            cwd=tmp_path)  # not the project's mypy.ini: a plug-in author's default checks
    assert results["good"].returncode == 0, results["good"].stdout
    assert results["bad"].returncode == 1 and '"MajorityOptions" has no attribute "batch_sise"' in \
        results["bad"].stdout, results["bad"].stdout
