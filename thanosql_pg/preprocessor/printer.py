"""Turns ``ast`` nodes into plain SQL (the shapes of docs/ARCHITECTURE.md).

Every ThanoSQL statement becomes one SELECT statement, usable under the simple
and the extended query protocol and as a subquery. Nothing of the user's is
spliced raw except the query after AS where the shape needs it as SQL
(PREDICT, SEARCH IMAGE); names and option values go through ``literals``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from thanosql_pg.algorithms import registry
from thanosql_pg.errors import ThanoSQLError
from thanosql_pg.preprocessor import ast
from thanosql_pg.preprocessor.literals import dollar_quote, quote_ident, quote_literal, quote_nullable


def _default(statement: str, name: str) -> Any:
    """The default of a statement-level option (the registry's STATEMENT_OPTIONS)."""
    return registry.statement_default(statement, name)


def jsonb(options: dict[str, Any]) -> str:
    """``'{...}'::jsonb`` for ``options``."""
    return quote_literal(json.dumps(options, ensure_ascii=False)) + "::jsonb"


def render_query(query: ast.Query) -> str:
    """The query's text with its nested ThanoSQL statements rewritten."""
    if not query.nested:
        return query.text
    return _splice(query.text, query.start, query.nested)


def splice(sql: str, statements: Sequence[ast.Statement]) -> str:
    """``sql`` with each statement's text replaced by its rewrite; all else kept as is."""
    return _splice(sql, 0, statements)


def _splice(text: str, offset: int, statements: Sequence[ast.Statement]) -> str:
    parts: list[str] = []
    pos = 0
    for s in statements:
        parts.append(text[pos : s.start - offset])
        parts.append(render(s))
        pos = s.end - offset
    parts.append(text[pos:])
    return "".join(parts)


# A background job's statement reads the rows fixed at submission through this view,
# which the job's worker makes (server/jobs.py).
JOB_ROWS = "SELECT * FROM pg_temp.__thanosql_job_rows"


def render(stmt: ast.Statement) -> str:
    """One ThanoSQL statement as one SQL statement (no trailing ``;``)."""
    if isinstance(stmt, ast.WithOptions) and stmt.normalized.get(registry.BACKGROUND.name) is True:
        return _background(stmt)
    if isinstance(stmt, ast.BuildModel):
        return (
            f"SELECT * FROM thanosql.build_model({quote_literal(stmt.model)}, "
            f"{quote_literal(stmt.algorithm)}, {jsonb(stmt.normalized)}, "
            f"{dollar_quote(render_query(stmt.query))})"
        )
    if isinstance(stmt, ast.FitModel):
        return (
            f"SELECT * FROM thanosql.fit_model({quote_literal(stmt.model)}, "
            f"{quote_literal(stmt.base_model)}, {jsonb(stmt.normalized)}, "
            f"{dollar_quote(render_query(stmt.query))})"
        )
    if isinstance(stmt, ast.Predict):
        return _predict(stmt)
    if isinstance(stmt, ast.Evaluate):
        # each report (option report, 'summary' unless written) has its own columns and function
        function = registry.report_of(stmt.normalized.get("report")).function
        return (
            f"SELECT * FROM thanosql.{function}({quote_literal(stmt.model)}, {jsonb(stmt.normalized)}, "
            f"{dollar_quote(render_query(stmt.query))})"
        )
    if isinstance(stmt, ast.Convert):
        return _convert(stmt)
    if isinstance(stmt, ast.SearchImage):
        return _search(stmt)
    if isinstance(stmt, ast.ListModels):
        return "SELECT name, class_name, last_updated_utc FROM thanosql.list_models()"
    if isinstance(stmt, ast.DeleteModel):
        return f"SELECT thanosql.delete_model({quote_literal(stmt.model)}, {str(stmt.if_exists).lower()})"
    if isinstance(stmt, ast.DescribeModel):
        return f"SELECT * FROM thanosql.describe_model({quote_literal(stmt.model)})"
    raise TypeError(f"cannot render {type(stmt).__name__}")


def _background(stmt: ast.WithOptions) -> str:
    """``thanosql.submit_job``: the statement as a job. BUILD/FIT pass their algorithm or
    base model; PREDICT, EVALUATE and CONVERT their plain SQL over the job's rows."""
    opts = {k: v for k, v in stmt.normalized.items() if k != registry.BACKGROUND.name}
    source: str | None = None
    statement: str | None = None
    if isinstance(stmt, ast.BuildModel):
        kind, source = "build", stmt.algorithm
    elif isinstance(stmt, ast.FitModel):
        kind, source = "fit", stmt.base_model
    else:
        kind = stmt.keyword.lower()
        rows = replace(stmt.query, text=JOB_ROWS, start=0, end=len(JOB_ROWS), nested=(), source_table=None)
        statement = render(replace(stmt, normalized=opts, query=rows))
    return (
        f"SELECT * FROM thanosql.submit_job({quote_literal(kind)}, {quote_literal(stmt.model)}, "
        f"{quote_nullable(source)}, {jsonb(opts)}, {dollar_quote(render_query(stmt.query))}, "
        f"{quote_nullable(statement)})"
    )


# Names are qualified and prefixed so that columns of the user's query (say
# one called "q" or "__rn") cannot shadow the whole-row value or the order.
# PREDICT, and CONVERT when it returns rows, share this shape.
_INLINE = """\
WITH __thanosql_cfg AS MATERIALIZED (
  SELECT thanosql.prepare('{statement}', {model}, {opts}) AS c
), __thanosql_in AS MATERIALIZED (
  SELECT __thanosql_q, row_number() OVER () AS __thanosql_rn FROM ({query}) AS __thanosql_q
)
SELECT {columns}, {result} AS {result_col}
FROM __thanosql_in AS i
JOIN (
  SELECT unnest(g.rns) AS rn,
         unnest(thanosql.{statement}_batch((SELECT c FROM __thanosql_cfg), g.vals)) AS res
  FROM (SELECT array_agg(__thanosql_rn ORDER BY __thanosql_rn) AS rns,
               array_agg({value} ORDER BY __thanosql_rn) AS vals
        FROM __thanosql_in GROUP BY (__thanosql_rn - 1) / {batch_size}) AS g
) AS r ON r.rn = i.__thanosql_rn
ORDER BY i.__thanosql_rn"""


def inline(statement: str, model: str, opts: dict[str, Any], query: str, *,
           columns: Sequence[str] | None = None, result_type: str | None = None) -> str:
    """The one-statement shape that returns the query's rows plus a result column
    computed by ``thanosql.<statement>_batch`` (PREDICT, CONVERT). ``columns`` names
    the query's columns to keep (default all), ``result_type`` casts the result."""
    batch_size = registry.rows_per_call(statement, opts)
    result_col = str(opts.get("result_col", _default(statement, "result_col")))
    cols = "(i.__thanosql_q).*" if columns is None else ", ".join(
        f"(i.__thanosql_q).{quote_ident(c)}" for c in columns)
    input_col = registry.input_column(statement, opts)
    if input_col is not None:
        # Only the input column reaches the model: serializing whole rows (a bytea
        # image beside the path, say) cost more than the model. JSON null keeps a NULL
        # value apart from a missing column, as below.
        value = f"COALESCE(to_jsonb((__thanosql_q).{quote_ident(input_col)}), 'null'::jsonb)"
    else:
        # The options do not say which column (their families differ): the model's, at run time.
        value = "to_jsonb(__thanosql_q) -> (SELECT c->>'input_col' FROM __thanosql_cfg)"
    return _INLINE.format(
        value=value,
        statement=statement,
        model=quote_literal(model),
        opts=jsonb(opts),
        query=query,
        columns=cols,
        result="r.res" if result_type is None else f"r.res::{result_type}",
        result_col=quote_ident(result_col),
        batch_size=batch_size,
    )


def _predict(stmt: ast.Predict) -> str:
    opts = dict(stmt.normalized)
    table_name = opts.pop("table_name", None)
    sql = inline("predict", stmt.model, opts, render_query(stmt.query))
    if table_name is None:
        return sql
    return f"SELECT * FROM thanosql.save_table({quote_literal(table_name)}, {dollar_quote(sql)})"


def _convert(stmt: ast.Convert) -> str:
    """Into the query's own table (``SELECT ... FROM t [WHERE ...]``) or into table_name:
    thanosql.convert does the writing. Otherwise the rows come back, PREDICT-style."""
    opts = stmt.normalized
    source = stmt.query.source_table
    if source is None and opts.get("table_name") is None:
        return inline("convert", stmt.model, opts, render_query(stmt.query))
    return (
        f"SELECT * FROM thanosql.convert({quote_literal(stmt.model)}, {jsonb(opts)}, "
        f"{dollar_quote(render_query(stmt.query))}, {quote_nullable(source)})"
    )


# The query embedding is computed once per execution: a CTE that two
# uncorrelated subqueries read (InitPlans), so ORDER BY compares the column
# with a constant-at-run-time value and an HNSW (vector_cosine_ops) index on
# it can drive the ORDER BY ... LIMIT.
_SEARCH = (
    "WITH __thanosql_e AS MATERIALIZED (SELECT thanosql.embed_query({args}) AS v) "
    "SELECT s.*, 1 - ({emb} <=> (SELECT v FROM __thanosql_e)) AS {result_col} "
    "FROM ({query}) AS s "
    "ORDER BY {emb} <=> (SELECT v FROM __thanosql_e)"
)


def _search(stmt: ast.SearchImage) -> str:
    opts = dict(stmt.normalized)
    emb = "s." + quote_ident(opts["emb_col"])
    result_col = quote_ident(opts.get("result_col", _default("search", "result_col")))
    top_k = opts["top_k"] if "top_k" in opts else _default("search", "top_k")
    args = f"{quote_literal(stmt.model)}, "
    param = opts.get("search_input")
    if isinstance(param, ast.Param):  # bound by the client: passed on as $n
        del opts["search_input"]
        args += f"{jsonb(opts)}, ${param.number}"
    else:
        args += jsonb(opts)
    sql = _SEARCH.format(args=args, emb=emb, result_col=result_col, query=render_query(stmt.query))
    if top_k is not None:
        sql += f" LIMIT {int(top_k)}"
    return sql


def error_statement(error: ThanoSQLError, n_params: int = 0) -> str:
    """``SELECT thanosql.raise_error(...)``: the server raises ``error`` for us.

    With ``n_params`` the statement still takes $1..$n (as text), so a Bind
    for the statement the client prepared succeeds and the error comes back
    from Execute, in the right transaction state.
    """
    sqlstate = error.sqlstate if _valid_sqlstate(error.sqlstate) else "XX000"
    position = "NULL" if error.position is None else str(int(error.position))
    sql = (
        f"SELECT thanosql.raise_error({quote_literal(sqlstate)}, {quote_literal(error.message)}, "
        f"{quote_nullable(error.detail)}, {quote_nullable(error.hint)}, {position})"
    )
    if n_params > 0:
        params = ", ".join(f"${i}::text" for i in range(1, n_params + 1))
        sql += f" FROM (SELECT {params}) AS _p"
    return sql


def _valid_sqlstate(code: str) -> bool:
    return len(code) == 5 and code.isascii() and code.isalnum() and code.upper() == code
