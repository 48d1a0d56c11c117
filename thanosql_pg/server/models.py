"""Loaded models and the per-session model cache.

A PREDICT calls predict_batch once per batch; loading weights from
model_chunks every time would dominate, so each backend keeps its most
recently used models. The cache key is the catalog row's (version, xmin):
version bumps on overwrite and FIT, and xmin tells apart two writes that
reuse a version number after a rollback.
"""

from __future__ import annotations

import gc
import importlib
from collections import OrderedDict
from typing import Any

import plpy

from thanosql_pg.algorithms import registry
from thanosql_pg.algorithms.contract import Evaluation, Resolved, Row
from thanosql_pg.algorithms.registry import Options
from thanosql_pg.errors import FeatureNotAvailable, UndefinedModel
from thanosql_pg.server import catalog, native, spi
from thanosql_pg.server.media import MediaReader

MAX_CACHED = 2  # models kept per backend; big ones are hundreds of MB each

_cache: OrderedDict[int, tuple[tuple[Any, ...], LoadedModel]] = OrderedDict()


class LoadedModel:
    """A stored model, loaded: the family's model object (a contract.Predictor or
    contract.Embedder) plus its catalog record."""

    def __init__(self, record: catalog.ModelRecord, model: Any, device: str) -> None:
        self.record = record
        self.model = model
        self.device = device

    def predict_values(self, values: list[Any], opts: Options, resolved: Resolved) -> list[str | None]:
        """Predictions for jsonb-decoded input values (a path, or bytea as "\\x..." hex)."""
        reader = MediaReader.for_session(column=resolved.input_col, from_json=True)
        # rn 0: a PREDICT batch does not know the rows' positions; errors name the file
        labels: list[str | None]
        labels, skipped = self.model.predict([Row(0, v) for v in values], reader, opts)
        if skipped:
            plpy.notice(f"PREDICT skipped {len(skipped)} unreadable rows (their result is NULL);"
                        f" first: {skipped[0]}")
        return labels

    def evaluate(self, source: Any, opts: Options) -> dict[str, float] | Evaluation:
        result: dict[str, float] | Evaluation = self.model.evaluate(source, opts)
        return result


def resolve_device(requested: str | None) -> str:
    """The device option, with 'auto' deferring to the thanosql.device setting."""
    requested = (requested or "auto").lower()
    if requested == "auto":
        requested = (native.setting("thanosql.device") or "auto").lower()
    return requested


def family_module(family: registry.Family) -> Any:
    """A family's model module (contract.FamilyModule), imported on first use."""
    if family.model is None:
        raise FeatureNotAvailable(f"{family.name} models are not available in this version of thanosql_pg")
    return importlib.import_module(family.model)


def module_for(record: catalog.ModelRecord) -> Any:
    """The model module of a stored model's family."""
    return family_module(registry.family(record.family))


def load(record: catalog.ModelRecord, module: Any, device: str | None = "auto") -> LoadedModel:
    """Load a stored model (not this session's model cache: see ``cached``)."""
    from thanosql_pg.server import weights_cache

    resolved = resolve_device(device)
    # Safetensors weights are shared with the other sessions through a mapped file (see
    # weights_cache); a payload of another format is the family's own business: bytes.
    if "safetensors" in record.format:
        payload = weights_cache.payload(record, catalog.load_payload)
    else:
        payload = catalog.load_payload(record)
    model = module.load(record, payload, resolved)
    del payload
    return LoadedModel(record, model, resolved)


def _evict(model_id: int) -> None:
    if _cache.pop(model_id, None) is not None:
        gc.collect()
        _empty_cuda_cache()


def _empty_cuda_cache() -> None:
    import sys

    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def cached(resolved: Resolved) -> LoadedModel:
    """The model a statement resolved to, on its device, loaded once per session and
    reloaded when it has been overwritten or fitted since. Read through the caller's
    row-level security every time: a revoked grant stops the next batch."""
    model_id = resolved.model_id
    rows = plpy.execute(spi.plan("SELECT version, xmin::text AS x FROM thanosql.models"
                              " WHERE id OPERATOR(pg_catalog.=) $1",
                              ["bigint"]), [model_id])
    if not rows.nrows():
        _evict(model_id)
        raise UndefinedModel(f'model "{resolved.model}" does not exist',
                             hint="It may have been deleted since the statement started.")
    device = resolved.device
    key = (rows[0]["version"], rows[0]["x"], device)
    hit = _cache.get(model_id)
    if hit is not None and hit[0] == key:
        _cache.move_to_end(model_id)
        return hit[1]
    # Drop the stale copy (and, when full, the least recently used model)
    # before loading, so that two big models are never held at once needlessly.
    _evict(model_id)
    while len(_cache) >= MAX_CACHED:
        _evict(next(iter(_cache)))
    record = catalog.get(resolved.model, "USE")
    if record.id != model_id:  # dropped and rebuilt under the same name meanwhile
        raise UndefinedModel(f'model "{resolved.model}" was replaced while the statement ran')
    predictor = load(record, module_for(record), device)
    _cache[model_id] = (key, predictor)
    return predictor
