"""The columns that several layers name, each defined once: the SQL functions' results
(scripts/build_sql.py writes them into the extension's SQL where it finds
``@COLUMNS:<shape>@``), the notebook magic that recognises them, the pictures drawn
from them, and the family contract (a Trained.epochs row has training_info's columns).
Pure Python: the build, the magic and the server all import it."""

from __future__ import annotations

Shape = tuple[tuple[str, str], ...]  # (column, SQL type), in order

# BUILD MODEL's and FIT MODEL's result row (thanosql.build_model, thanosql.fit_model)
TRAINED: Shape = (("model", "text"), ("algorithm", "text"), ("rows", "bigint"), ("epochs", "integer"),
                  ("seconds", "double precision"), ("metrics", "jsonb"))

# One epoch of a BUILD/FIT (thanosql.model_epochs' columns, shared.training's rows): ``epoch``
# is 1-based; ``metric`` names what train_metric/validation_metric measure ('accuracy',
# 'cer', 'contrastive_loss'); validation_* are None without a validation part.
EPOCH: Shape = (("epoch", "integer"), ("metric", "text"), ("train_loss", "double precision"),
                ("train_metric", "double precision"), ("validation_loss", "double precision"),
                ("validation_metric", "double precision"), ("learning_rate", "double precision"),
                ("seconds", "double precision"), ("samples_per_second", "double precision"))

# thanosql.training_info(model, version): the version, then an epoch's columns
TRAINING_INFO: Shape = (("version", "integer"), *EPOCH)

# A statement with background=True (thanosql.submit_job): the job it queued
SUBMITTED: Shape = (("job_id", "bigint"), ("model", "text"), ("status", "text"))

SHAPES: dict[str, Shape] = {"trained": TRAINED, "epoch": EPOCH, "training_info": TRAINING_INFO,
                            "submitted": SUBMITTED}


def names(shape: Shape) -> tuple[str, ...]:
    return tuple(name for name, _ in shape)


def columns_sql(shape: Shape) -> str:
    """``name type, ...`` as a RETURNS TABLE lists them."""
    return ", ".join(f"{_ident(name)} {sql_type}" for name, sql_type in shape)


def _ident(name: str) -> str:
    # the few column names that are SQL keywords are quoted, as PostgreSQL prints them
    return f'"{name}"' if name in ("class", "precision") else name
