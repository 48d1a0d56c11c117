"""EVALUATE's reports (option ``report``): the confusion matrix and per-class scores of an
image classifier, per-utterance WER/CER of a speech model, and retrieval precision@k of a
SimCLR model, each checked against an independent computation on PREDICT's (or CONVERT's)
output for the same rows. Real PostgreSQL, the real extension, native ThanoSQL rewritten by
the proxy's preprocessor (thanosql_pg.connect); small models (a few digits per class, input
size 32; the hand-built speech "tone detector" of tests/speech.py, whose transcripts are known
exactly).

The pure parts (shared.metrics, the registry's reports) are tested first, without a database.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import digits
import numpy as np
import psycopg
import pytest
import retrieval
import speech  # tests/speech.py
from catalog_rows import drop_prefixed

import thanosql_pg
from thanosql_pg.algorithms import registry
from thanosql_pg.algorithms.contract import Evaluation
from thanosql_pg.algorithms.shared import metrics
from thanosql_pg.errors import DataError, FeatureNotAvailable, InvalidOption

Conn = psycopg.Connection
PREFIX = "er_" + uuid.uuid4().hex[:6]


def name(suffix: str) -> str:
    return f"{PREFIX}_{suffix}"


# --- pure: shared.metrics and the registry ---------------------------------------------------------
def test_per_class_rows_match_sklearn_and_the_summary() -> None:
    from sklearn.metrics import precision_recall_fscore_support

    rng = np.random.default_rng(0)
    truth = [str(x) for x in rng.integers(0, 11, 400)]
    pred = [t if rng.random() < 0.6 else str(rng.integers(0, 12)) for t in truth]  # "11" is never true
    confusion = Counter(zip(truth, pred, strict=True))
    rows = metrics.per_class_rows(confusion, order=[str(i) for i in range(11)])
    classes = [r[0] for r in rows[:-2]]
    assert classes == [str(i) for i in range(12)]  # the model's order, then the others; "10" after "9"
    p, r, f, s = precision_recall_fscore_support(truth, pred, labels=classes, zero_division=0)
    for row, *want in zip(rows, p, r, f, s, strict=False):
        assert row[1:4] == pytest.approx(want[:3], abs=1e-12) and row[4] == want[3]
    summary = metrics.classification_metrics(confusion)
    assert rows[-2][0] == metrics.MACRO_AVG and rows[-1][0] == metrics.WEIGHTED_AVG
    assert rows[-2][1:4] == pytest.approx([summary["Precision"], summary["Recall"], summary["F1"]], abs=1e-12)
    weighted = precision_recall_fscore_support(truth, pred, average="weighted", zero_division=0)[:3]
    assert rows[-1][1:4] == pytest.approx(weighted, abs=1e-12) and rows[-1][4] == rows[-2][4] == 400


def test_confusion_rows_and_classification_result() -> None:
    confusion = Counter({("b", "a"): 2, ("a", "a"): 3, ("b", "b"): 1, ("c", "a"): 0})
    want = [("b", "b", 1), ("b", "a", 2), ("a", "a", 3)]
    assert metrics.confusion_rows(confusion, order=["b", "a"]) == want
    assert metrics.classification_result(confusion, "summary") == metrics.classification_metrics(confusion)
    res = metrics.classification_result(confusion, "confusion_matrix", extra={"Skipped": 1.0})
    assert isinstance(res, Evaluation) and res.report == "confusion_matrix" and res.metrics["Skipped"] == 1.0
    with pytest.raises(FeatureNotAvailable):
        metrics.classification_result(confusion, "per_row")


def test_per_row_worst_first() -> None:
    scores = metrics.UtteranceScores("per_row")
    for rn, ref, hyp in ((1, "A B", "A B"), (2, "A B", "A"), (3, "AB", "ABC"), (4, "A B C", "X Y")):
        scores.add(rn, f"/x/{rn}.wav" if rn != 3 else b"RIFF", ref, hyp)
    res = scores.result()
    assert isinstance(res, Evaluation)
    assert [r[0] for r in res.rows] == [4, 3, 2, 1]  # WER 1, 1 (CER 0.5 < 0.8), 0.5, 0
    assert res.rows[1] == (3, None, "AB", "ABC", 1.0, 0.5)  # bytes are no path: input NULL
    assert res.metrics["WER"] == pytest.approx(5 / 8) and res.rows[-1][1] == "/x/1.wav"
    assert metrics.UtteranceScores("summary").result() == {"WER": 0.0, "CER": 0.0}


def test_retrieval_precision_against_brute_force() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(60, 8)).astype(np.float32)
    labels = [int(v) for v in rng.integers(0, 3, 60)]
    got = metrics.retrieval_precision(x, labels, (1, 5, 100))
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    sim = unit @ unit.T
    np.fill_diagonal(sim, -np.inf)
    ranked = np.argsort(-sim, axis=1)
    lab = np.array(labels)
    for k, kk in ((1, 1), (5, 5), (100, 59)):  # k beyond the other rows: all of them
        want = np.mean([(lab[ranked[i, :kk]] == lab[i]).mean() for i in range(60)])
        assert got[k] == pytest.approx(want, abs=1e-6)
    # a separate gallery (CLIP: images against texts): the query is not left out
    g = rng.normal(size=(10, 8))
    got = metrics.retrieval_precision(x[:5], labels[:5], (1,), gallery=g, gallery_labels=[0, 1, 2] * 3 + [0])
    assert 0.0 <= got[1] <= 1.0
    with pytest.raises(DataError):
        metrics.retrieval_precision(x[:1], labels[:1], (1,))
    assert metrics.retrieval_result(x, labels, "summary", 5).keys() == {
        "Precision@1", "Precision@5", "Median similarity@5, same label", "Median similarity@5, other label"}


def test_the_spread_of_retrieval_scores_against_brute_force() -> None:
    """The medians of the top-k neighbours' similarities, same label and other label, to the
    bins' 0.001; and a clean separation shows as a gap between them."""
    rng = np.random.default_rng(2)
    x = rng.normal(size=(80, 6)).astype(np.float32)
    labels = [int(v) for v in rng.integers(0, 4, 80)]
    got = metrics.retrieval_scores(x, labels, (1, 10))
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    sim = unit @ unit.T
    np.fill_diagonal(sim, -np.inf)
    ranked = np.argsort(-sim, axis=1)[:, :10]
    lab = np.array(labels)
    same = [sim[i, j] for i in range(80) for j in ranked[i] if lab[j] == lab[i]]
    other = [sim[i, j] for i in range(80) for j in ranked[i] if lab[j] != lab[i]]
    assert got.same_label_similarity == pytest.approx(float(np.median(same)), abs=2e-3)
    assert got.other_label_similarity == pytest.approx(float(np.median(other)), abs=2e-3)
    # two tight clusters far apart: same-label neighbours near 1, the others far below
    centers = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    pts = np.repeat(centers, 20, axis=0) + rng.normal(scale=0.05, size=(40, 2)).astype(np.float32)
    clustered = metrics.retrieval_scores(pts, [0] * 20 + [1] * 20, (25,))
    assert clustered.same_label_similarity > 0.99 > 0.5 > clustered.other_label_similarity
    assert metrics.retrieval_scores(pts, [0] * 20 + [1] * 20, (5,)).other_label_similarity is None


def test_reports_come_from_the_family_specs() -> None:
    ic = registry.FAMILIES["image_classification"]
    speech_family = registry.FAMILIES["speech_recognition"]
    embedding = registry.FAMILIES["image_embedding"]
    choices = {f.name: next(o.choices for o in registry.options_for("evaluate", f) if o.name == "report")
               for f in (ic, speech_family, embedding)}
    assert choices == {"image_classification": ("summary", "per_class", "confusion_matrix"),
                       "speech_recognition": ("summary", "per_row"), "image_embedding": ("summary",)}
    union = next(o for o in registry.options_for("evaluate") if o.name == "report")
    assert set(union.choices) == set(registry.REPORTS)  # the preprocessor accepts any family's
    with pytest.raises(InvalidOption, match="must be one of summary, per_row"):
        registry.normalize_options("evaluate", {"report": "per_class"}, speech_family)
    assert registry.report_of(None).function == "evaluate"
    assert registry.report_of("per_row").function == "evaluate_per_row"


# --- the database ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def conn(server_dsn: str) -> Iterator[Conn]:
    """One backend for the module (torch is imported once), through thanosql_pg.connect: it
    rewrites ThanoSQL in the client with this checkout's preprocessor, as the proxy does."""
    with thanosql_pg.connect(server_dsn, autocommit=True) as c:
        yield c
        drop_prefixed(c, PREFIX)


def test_sql_functions_have_the_registry_s_columns(conn: Conn) -> None:
    for report, shape in registry.REPORTS.items():
        rows = conn.execute(
            "SELECT a.name, pg_catalog.format_type(a.type, NULL) FROM pg_catalog.pg_proc p,"
            " unnest(p.proargnames, p.proallargtypes, p.proargmodes) AS a(name, type, mode)"
            " WHERE p.oid = %s::regprocedure AND a.mode = 't'",
            [f"thanosql.{shape.function}(text, jsonb, text, text)"]).fetchall()
        assert tuple(rows) == shape.columns, report


@pytest.fixture(scope="module")
def classifier(conn: Conn, files: Path) -> dict[str, Any]:
    """A small ConvNeXt_Tiny on 8 digits per class, and 5 other digits per class to evaluate on."""
    train, test = digits.split(digits.digits(files))
    train_t = digits.load_table(conn, name("train"), digits.per_class(train, 8))
    test_t = digits.load_table(conn, name("test"), digits.per_class(test, 5))
    model = name("digits")
    conn.execute(f"""BUILD MODEL {model} USING ConvNeXt_Tiny
        OPTIONS (image_col='path', label_col='label', epochs=3, batch_size=8, input_size=32,
                 learning_rate=0.001, pretrained=False)
        AS SELECT path, label FROM {train_t}""")
    return {"model": model, "test": test_t, "query": f"SELECT path, label FROM {test_t}"}


def _evaluate(conn: Conn, model: str, report: str | None, query: str, **opts: Any) -> psycopg.Cursor:
    given = {"image_col": "'path'", "label_col": "'label'", **opts}
    if report is not None:
        given["report"] = f"'{report}'"
    written = ", ".join(f"{k}={v}" for k, v in given.items())
    return conn.execute(f"EVALUATE USING {model} OPTIONS ({written}) AS {query}")


def _predicted(conn: Conn, clf: dict[str, Any]) -> list[tuple[str, str]]:
    rows = conn.execute(f"PREDICT USING {clf['model']} OPTIONS (image_col='path')"
                        f" AS {clf['query']}").fetchall()
    return [(str(label), pred) for _, label, pred in rows]


def test_confusion_matrix_matches_predict(conn: Conn, classifier: dict[str, Any]) -> None:
    cur = _evaluate(conn, classifier["model"], "confusion_matrix", classifier["query"])
    assert [c.name for c in cur.description] == ["actual", "predicted", "count"]
    rows = cur.fetchall()
    assert sum(n for _, _, n in rows) == 50  # every row once
    assert all(n > 0 for _, _, n in rows) and len({(a, p) for a, p, _ in rows}) == len(rows)
    pairs = _predicted(conn, classifier)
    assert Counter({(a, p): n for a, p, n in rows}) == Counter(pairs)
    # actual classes in the model's label order (0..9), predictions within each too
    order = [(int(a), int(p)) for a, p, _ in rows]
    assert order == sorted(order)
    # the summary is unchanged, and agrees with the matrix
    summary = dict(_evaluate(conn, classifier["model"], None, classifier["query"]).fetchall())
    assert list(summary) == ["Accuracy", "Precision", "Recall", "F1", "Rows"]
    assert summary["Accuracy"] == pytest.approx(sum(n for a, p, n in rows if a == p) / 50, abs=1e-12)
    print(f"\ndigits classifier (3 epochs, 80 images): accuracy {summary['Accuracy']:.2f} on 50")


def test_per_class_matches_sklearn(conn: Conn, classifier: dict[str, Any]) -> None:
    from sklearn.metrics import precision_recall_fscore_support

    cur = _evaluate(conn, classifier["model"], "per_class", classifier["query"], batch_size=7)
    assert [c.name for c in cur.description] == ["class", "precision", "recall", "f1", "support"]
    rows = cur.fetchall()
    truth, pred = zip(*_predicted(conn, classifier), strict=True)
    classes = [r[0] for r in rows[:-2]]
    assert set(classes) == set(truth) | set(pred)
    assert [r[0] for r in rows[-2:]] == ["macro avg", "weighted avg"]
    p, r, f, s = precision_recall_fscore_support(truth, pred, labels=classes, zero_division=0)
    for row, *want in zip(rows, p, r, f, s, strict=False):
        assert list(row[1:4]) == pytest.approx(want[:3], abs=1e-9) and row[4] == want[3]
    macro = precision_recall_fscore_support(truth, pred, average="macro", zero_division=0)[:3]
    assert list(rows[-2][1:4]) == pytest.approx(macro, abs=1e-9) and rows[-2][4] == 50
    # nested like any ML statement; `class` needs no quotes
    (n,) = conn.execute(f"""SELECT count(*) FROM (EVALUATE USING {classifier['model']}
        OPTIONS (image_col='path', report='per_class') AS {classifier['query']}) AS e
        WHERE class NOT LIKE '%avg'""").fetchone()
    assert n == len(classes)


def test_reports_are_recorded_and_checked(conn: Conn, classifier: dict[str, Any]) -> None:
    model, query = classifier["model"], classifier["query"]

    def history() -> int:
        return conn.execute("SELECT count(*) FROM thanosql.model_metrics h JOIN thanosql.models m"
                            " ON m.id = h.model_id WHERE m.name = %s AND h.statement = 'EVALUATE'",
                            [model]).fetchone()[0]

    before = history()
    _evaluate(conn, model, "per_class", query).fetchall()
    assert history() == before + 1  # the summary of every EVALUATE goes into the history
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="must be one of summary, per_class"):
        _evaluate(conn, model, "per_row", query)
    # the functions without the proxy: each names its report; another report's options are refused
    rows = conn.execute("SELECT * FROM thanosql.evaluate_confusion_matrix(%s, %s, %s)",
                        [model, '{"image_col": "path"}', query]).fetchall()
    assert sum(r[2] for r in rows) == 50
    with pytest.raises(psycopg.errors.InvalidParameterValue, match=r"thanosql\.evaluate_per_class"):
        conn.execute("SELECT * FROM thanosql.evaluate(%s, %s, %s)",
                     [model, '{"image_col": "path", "report": "per_class"}', query])


# --- speech: per-utterance WER/CER ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def tones(conn: Conn, files: Path) -> Iterator[dict[str, Any]]:
    """The tone detector (its transcript of n tone bursts is "A" * n), and clips of 1-3 bursts."""
    import soundfile as sf

    folder = files / "speech" / PREFIX
    folder.mkdir(parents=True)
    speech.readable(folder.parent)
    ckpt = speech.write_tone_detector(folder / "tones")
    paths = {}
    for n in (1, 2, 3):
        paths[n] = str(folder / f"bursts{n}.wav")
        sf.write(paths[n], speech.tone_bursts(n), 16000)
        os.chmod(paths[n], 0o644)  # the server runs as another OS user
    model = name("tones")
    conn.execute(f"""BUILD MODEL {model} USING Wav2Vec2En
        OPTIONS (audio_col='p', text_col='t', base_model='{ckpt}', epochs=1, batch_size=1,
                 learning_rate=1e-12)
        AS SELECT '{paths[3]}' AS p, 'AAA' AS t""")
    yield {"model": model, "paths": paths}
    shutil.rmtree(folder, ignore_errors=True)


def test_speech_per_row_worst_first(conn: Conn, tones: dict[str, Any]) -> None:
    p = tones["paths"]
    # (bursts, reference): hypotheses AAA, AA, A, AAA
    clips = [(3, "AAA"), (2, "AAA"), (1, "A B"), (3, "B")]
    query = " UNION ALL ".join(f"SELECT {i} AS id, '{p[n]}' AS p, '{ref}' AS t"
                               for i, (n, ref) in enumerate(clips, 1))
    query = f"SELECT p, t FROM ({query}) AS c ORDER BY id"
    cur = conn.execute(f"EVALUATE USING {tones['model']} OPTIONS (audio_col='p', text_col='t',"
                       f" report='per_row', batch_size=3) AS {query}")
    assert [c.name for c in cur.description] == ["row_number", "input", "reference", "hypothesis", "wer",
                                                 "cer"]
    rows = cur.fetchall()
    assert rows == [
        (4, p[3], "B", "AAA", 1.0, 3.0),
        (2, p[2], "AAA", "AA", 1.0, pytest.approx(1 / 3)),
        (3, p[1], "A B", "A", 0.5, pytest.approx(2 / 3)),
        (1, p[3], "AAA", "AAA", 0.0, 0.0),
    ]
    # each row as an independent computation on PREDICT's transcripts has it
    predicted = conn.execute(f"PREDICT USING {tones['model']} OPTIONS (audio_col='p') AS {query}").fetchall()
    for rn, _, ref, hyp, wer, cer in rows:
        _, ref_p, hyp_p = predicted[rn - 1]
        assert (ref, hyp) == (ref_p, hyp_p)
        assert wer == metrics.edit_distance(ref.split(), hyp.split()) / len(ref.split())
        assert cer == pytest.approx(metrics.edit_distance(ref, hyp) / len(ref))
    summary = dict(conn.execute(f"EVALUATE USING {tones['model']} OPTIONS (audio_col='p', text_col='t')"
                                f" AS {query}").fetchall())
    assert summary["WER"] == pytest.approx((1 + 1 + 1 + 0) / (1 + 1 + 2 + 1))
    # bytea input: no path to show
    (row,) = conn.execute(f"""EVALUATE USING {tones['model']}
        OPTIONS (audio_col='a', text_col='t', report='per_row')
        AS SELECT pg_read_binary_file('{p[2]}') AS a, 'AA' AS t""").fetchall()
    assert row == (1, None, "AA", "AA", 0.0, 0.0)
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="must be one of summary, per_row"):
        conn.execute(f"EVALUATE USING {tones['model']} OPTIONS (audio_col='p', report='confusion_matrix')"
                     f" AS {query}")


# --- SimCLR: retrieval precision@k -------------------------------------------------------------------
def test_simclr_retrieval_precision(conn: Conn, files: Path) -> None:
    rows = digits.per_class(digits.digits(files), 8)
    table = digits.load_table(conn, name("emb"), rows)
    model = name("simclr")
    conn.execute(f"""BUILD MODEL {model} USING SimCLR
        OPTIONS (image_col='path', epochs=1, batch_size=16, input_size=16, embedding_dim=16)
        AS SELECT path FROM {table}""")
    query = f"SELECT path, label FROM {table} ORDER BY id"
    m = dict(conn.execute(f"EVALUATE USING {model} OPTIONS (image_col='path', label_col='label', top_k=5)"
                          f" AS {query}").fetchall())
    print(f"\nSimCLR (1 epoch, 80 digits) retrieval: {m}")
    assert list(m) == ["Precision@1", "Precision@5", "Median similarity@5, same label",
                       "Median similarity@5, other label", "Rows"] and m["Rows"] == 80
    assert -1.0 <= m["Median similarity@5, other label"] <= 1.0
    assert 0.0 <= m["Precision@5"] <= 1.0 and 0.0 <= m["Precision@1"] <= 1.0
    assert m["Precision@1"] > 0.1  # chance is 7/79; digits are easy even for a barely trained model
    # the same from CONVERT's embeddings (into the table), ranked here
    conn.execute(f"CONVERT USING {model} OPTIONS (image_col='path', result_col='e') AS SELECT * FROM {table}")
    emb = conn.execute(f"SELECT label, e FROM {table} ORDER BY id").fetchall()
    x = np.stack([np.asarray(e, dtype=np.float32) for _, e in emb])
    labels = [lab for lab, _ in emb]
    for k in (1, 5):
        assert m[f"Precision@{k}"] == pytest.approx(retrieval.precision_at(x, labels, k), abs=0.03)
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="must be one of summary"):
        conn.execute(f"EVALUATE USING {model} OPTIONS (image_col='path', report='per_class') AS {query}")
