"""Finding what there is: thanosql.algorithms() lists every algorithm with its options straight
from the registry, and a misspelled option, algorithm or model name gets a "did you mean" hint."""

from __future__ import annotations

import psycopg
import pytest
from catalog_rows import add_model
from psycopg import errors

from thanosql_pg.algorithms import registry


def test_algorithms_lists_every_algorithm_with_its_options(db: psycopg.Connection) -> None:
    rows = db.execute("SELECT algorithm, task, options FROM thanosql.algorithms()").fetchall()
    assert [r[0] for r in rows] == [a.name for a in registry.ALGORITHMS.values()]
    assert len(rows) == 8
    by_name = {r[0]: r for r in rows}
    assert by_name["ConvNeXt_Tiny"][1] == "image_classification" and by_name["CLIP"][1] == "clip"
    build = {o["name"]: o for o in by_name["ConvNeXt_Tiny"][2]["build"]}
    assert build["epochs"] == {"name": "epochs", "type": "int", "default": 3, "required": False,
                               "nullable": False, "maximum": registry.MAX_EPOCHS, "positive": True,
                               "aliases": ["max_epochs"], "description": build["epochs"]["description"]}
    assert build["class_weight"]["choices"] == ["none", "balanced"]
    assert set(by_name["SimCLR"][2]) == {"build", "fit", "convert", "search", "evaluate"}
    search = {o["name"]: o for o in by_name["CLIP"][2]["search"]}
    assert search["search_by"]["required"] and search["search_input"]["type"] == "any"
    # every option says what it is in a line
    for _, _, options in rows:
        for statement, opts in options.items():
            for o in opts:
                assert o["description"], (statement, o["name"])


def test_misspellings_get_a_did_you_mean(db: psycopg.Connection, unique_name: str) -> None:
    with pytest.raises(errors.InvalidParameterValue) as e:
        db.execute("BUILD MODEL m USING ConvNeXt_Tiny OPTIONS (epochz=3) AS SELECT 1 AS image, 1 AS label")
    assert (e.value.diag.message_hint or "").startswith('Did you mean "epochs"?')
    with pytest.raises(errors.UndefinedObject) as e:
        db.execute("BUILD MODEL m USING ConvNext_Tny AS SELECT 1 AS image, 1 AS label")
    assert (e.value.diag.message_hint or "").startswith('Did you mean "ConvNeXt_Tiny"?')
    add_model(db, unique_name)
    with pytest.raises(errors.UndefinedObject) as e:
        db.execute(f"PREDICT USING {unique_name[:-1]}x AS SELECT 1 AS image")
    assert f'Did you mean "{unique_name}"?' in (e.value.diag.message_hint or "")
    with pytest.raises(errors.UndefinedObject) as e:  # nothing close: no guess
        db.execute("PREDICT USING zzzzzzzzzzzzzz AS SELECT 1 AS image")
    assert "Did you mean" not in (e.value.diag.message_hint or "")
    db.execute("SELECT thanosql.delete_model(%s)", [unique_name])


def test_did_you_mean_suggests_only_what_the_caller_may_see(direct: psycopg.Connection, cluster: dict,
                                                            unique_name: str) -> None:
    """A model another role owns is never suggested: the candidates are read through
    row-level security."""
    role = f"dym_{unique_name}"
    direct.execute(f'CREATE ROLE "{role}" LOGIN')
    try:
        add_model(direct, unique_name)
        dsn = cluster["server"].replace("root@", f"{role}@")
        with psycopg.connect(dsn, autocommit=True) as other, pytest.raises(errors.UndefinedObject) as e:
            other.execute("SELECT thanosql.prepare('predict', %s, '{}')", [unique_name[:-1] + "x"])
        assert unique_name not in (e.value.diag.message_hint or "")
    finally:
        direct.execute("SELECT thanosql.delete_model(%s)", [unique_name])
        direct.execute(f'DROP ROLE "{role}"')
