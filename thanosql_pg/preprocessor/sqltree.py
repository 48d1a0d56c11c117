"""PostgreSQL's parse tree (pglast's parse_sql_json) without risking the C stack.

libpg_query's parser itself is safe: bison keeps its stack on the heap and stops at
10000 levels ("memory exhausted"). But writing the tree out, as JSON or as protobuf
(``parse_sql_json``, ``parse_sql``), recurses in C once per tree level with no depth
check, and a left-deep expression needs no nesting in the grammar: ``SELECT 1+1+...+1``
with 65000 terms overflows an 8 MB stack. Inside PostgreSQL that
is a backend crash, and the postmaster restarts every session.

So a text is parsed into a tree only after :func:`check_depth` has bounded the tree's
depth from its tokens, and ``SQLSTATE 54001`` (what PostgreSQL answers for a statement
too deep for its own stack) otherwise. The JSON is then read only as deep as needed:
Python's json module is recursive too (it raises RecursionError, cleanly, past ~1000).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from pglast import parser as pg

from thanosql_pg.errors import StatementTooComplex
from thanosql_pg.preprocessor.lexer import Token

# The bound on depth_bound(). Measured on pglast 7.21 and 8.7 with a small stack (see
# tests/security/test_lexing.py, test_largest_allowed_trees_fit_in_2_mb_of_stack): writing
# the JSON takes at most ~130 bytes of C stack per unit, nested scalar subqueries being the
# worst shape, so 10000 units stay under 1.3 MB of a backend's 8 MB stack. PostgreSQL itself
# (max_stack_depth = 2MB) refuses 1+1+...+1 somewhere between 3000 and 10000 terms; what it
# runs and this refuses is long without commas and yet flat: thousands of AND-ed conditions,
# a CASE with thousands of WHENs.
MAX_DEPTH = 10_000

_OPEN = frozenset({"ASCII_40", "ASCII_91"})  # ( [
_CLOSE = frozenset({"ASCII_41", "ASCII_93"})  # ) ]
_COMMA = "ASCII_44"
_SET_OPS = frozenset({"union", "intersect", "except"})


def depth_bound(tokens: Sequence[Token]) -> int:
    """An upper bound, in tokens, of the depth of the parse tree of ``tokens``.

    Every level of a parse tree spends at least one token, so the token count is a
    bound; but a flat list (``IN (1, 2, ...)``, ``VALUES (...), (...)``, a select list)
    is not deep however long. So within each parenthesis or bracket, the commas split
    the tokens into segments, and a path down the tree goes through one segment per
    level of nesting: the bound is the largest sum of segment lengths along a path.
    Commas separate siblings everywhere in PostgreSQL's grammar except in a chain of
    set operations (``SELECT a, b UNION SELECT a, b UNION ...``, left-deep across the
    select lists' commas), so UNION/INTERSECT/EXCEPT count once more per level.
    """
    stack: list[tuple[int, int, int, int]] = []
    seg = child = best = setops = 0  # this level: segment length, deepest group in it, best segment
    for t in tokens:
        name = t.name
        if name in _OPEN:
            stack.append((seg + 1, child, best, setops))
            seg = child = best = setops = 0
        elif name in _CLOSE and stack:
            inner = max(best, seg + child) + setops
            seg, child, best, setops = stack.pop()
            seg += 1
            child = max(child, inner)
        elif name == _COMMA:
            best = max(best, seg + child)
            seg = child = 0
        else:
            seg += 1
            if t.word in _SET_OPS:
                setops += 1
    while stack:  # unclosed: the parser will say so; bound it all the same
        inner = max(best, seg + child) + setops
        seg, child, best, setops = stack.pop()
        child = max(child, inner)
    return max(best, seg + child) + setops


def check_depth(tokens: Sequence[Token], position: int | None) -> None:
    """Raise StatementTooComplex unless the tree of ``tokens`` can be written out safely."""
    if 2 * len(tokens) <= MAX_DEPTH:  # depth_bound counts each token at most twice
        return
    if depth_bound(tokens) > MAX_DEPTH:
        raise StatementTooComplex(
            "statement too complex: its expressions or set operations nest too deeply",
            detail=f"ThanoSQL reads statements nested at most {MAX_DEPTH} levels deep.",
            hint="Split the statement (a WITH query, a temporary table), or use IN (...) or "
            "ANY(ARRAY[...]) for long chains of conditions.",
            position=position,
        )


def parse_json(text: str, tokens: Sequence[Token], position: int | None = None) -> str:
    """``pg.parse_sql_json(text)`` once :func:`check_depth` allows it (``tokens`` are
    text's). Give it the lexer's shadow: pglast must not judge the literals."""
    check_depth(tokens, position)
    return pg.parse_sql_json(text)


_STATEMENTS = re.compile(r'\{"version":\d+,"stmts":\[\{"stmt":\{"(\w+)"')


def first_statement_kind(tree: str) -> str | None:
    """The node type of the first statement in parse_sql_json's output ("SelectStmt",
    ...), read from the text without decoding the (maybe deep) rest."""
    m = _STATEMENTS.match(tree)
    return m.group(1) if m is not None else None


_JSON_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]')


def load_shallow(tree: str, depth: int = 12) -> Any:
    """``json.loads(tree)``, with every object or array nested deeper than ``depth``
    replaced by ``true``: json.loads recurses once per level (RecursionError past
    ~1000), and callers look only near the root. Linear in the text."""
    try:
        return json.loads(tree)
    except RecursionError:
        pass
    parts: list[str] = []
    pos = level = 0
    cut = -1  # where the object being dropped starts
    for m in _JSON_TOKEN.finditer(tree):
        c = m.group()
        if c == "{" or c == "[":
            level += 1
            if level == depth + 1:
                cut = m.start()
        elif c == "}" or c == "]":
            if level == depth + 1:
                parts.append(tree[pos:cut])
                parts.append("true")
                pos = m.end()
            level -= 1
    parts.append(tree[pos:])
    return json.loads("".join(parts))


def split_plain(sql: str, *, standard_conforming_strings: bool = True,
                max_tokens: int | None = None) -> list[tuple[str, str | None]]:
    """The statements of plain SQL ``sql`` as the server would run them, each with, for
    the last one only, its node type from the grammar ("SelectStmt", "InsertStmt", ...).

    PostgreSQL's grammar splits the lexer's shadow (so a BEGIN ATOMIC body or a CREATE
    RULE action keeps its ";", and literals are read under the session's
    standard_conforming_strings); pglast's split runs the parser only, which never
    recurses on the tree. Raises LexicalError or SyntaxError (with positions in
    ``sql``), or StatementTooComplex where the last statement is too deep to classify;
    ``max_tokens`` bounds what is lexed (errors.TokenLimitExceeded, 54000).
    """
    from thanosql_pg.errors import SyntaxError as SQLSyntaxError
    from thanosql_pg.preprocessor.lexer import lex, unshadow_message

    tokens, shadow = lex(sql, standard_conforming_strings=standard_conforming_strings, max_tokens=max_tokens)
    try:
        slices = pg.split(shadow, with_parser=True, only_slices=True)
    except pg.ParseError as exc:
        index = exc.args[1]
        raise SQLSyntaxError(unshadow_message(exc.args[0], index, sql),
                             position=index + 1 if index is not None else len(sql) + 1) from None
    out: list[tuple[str, str | None]] = [(sql[s], None) for s in slices]
    if slices:
        last = slices[-1]
        inside = [t for t in tokens if last.start <= t.start < last.stop]
        try:
            tree = parse_json(shadow[last], inside, last.start + 1)
        except pg.ParseError as exc:  # parsed a moment ago as part of the whole text
            raise SQLSyntaxError(exc.args[0], position=last.start + 1) from None
        out[-1] = (out[-1][0], first_statement_kind(tree))
    return out


def append_to_select_list(query: str, columns: str, *, standard_conforming_strings: bool = True) -> str:
    """``query``, one ``SELECT ... FROM t ...`` on one table (or ``TABLE t``), with
    ``columns`` (SQL text, say ``tableoid AS x``) added at the end of its select list.

    Text is inserted before the FROM keyword, so the user's query is kept as written
    (no re-printing of a tree that may be deep). Raises FeatureNotAvailable for any
    other query, LexicalError or SyntaxError for text that is no valid SQL.
    """
    from thanosql_pg.errors import FeatureNotAvailable
    from thanosql_pg.errors import SyntaxError as SQLSyntaxError
    from thanosql_pg.preprocessor.lexer import lex, unshadow_message

    tokens, shadow = lex(query, standard_conforming_strings=standard_conforming_strings)
    try:
        tree = load_shallow(parse_json(shadow, tokens, 1))
    except pg.ParseError as exc:
        index = exc.args[1]
        raise SQLSyntaxError(unshadow_message(exc.args[0], index, query),
                             position=index + 1 if index is not None else len(query) + 1) from None
    stmts = tree.get("stmts") or []
    select = stmts[0].get("stmt", {}).get("SelectStmt") if len(stmts) == 1 else None
    from_clause = select.get("fromClause") if isinstance(select, dict) else None
    if (not isinstance(select, dict) or select.get("op", "SETOP_NONE") != "SETOP_NONE"
            or select.get("withClause") or not isinstance(from_clause, list) or len(from_clause) != 1
            or not isinstance(from_clause[0], dict) or "RangeVar" not in from_clause[0]):
        raise FeatureNotAvailable(
            "CONVERT into the query's own table needs a query SELECT ... FROM <table> [WHERE ...]",
            hint="Add table_name='...' to OPTIONS to write the rows and their embeddings to a new table.")
    location = from_clause[0]["RangeVar"].get("location", -1)
    depth = 0
    level = -1  # the parenthesis depth of the SELECT's own keywords
    where = None  # the FROM keyword to insert before
    for t in tokens:
        if t.start >= location:
            break
        if t.name == "ASCII_40":
            depth += 1
        elif t.name == "ASCII_41":
            depth -= 1
        elif level < 0 and t.word in ("select", "table"):
            level = depth
            if t.word == "table":  # TABLE t is SELECT * FROM t
                return f"{query[: t.start]}SELECT *, {columns} FROM{query[t.end :]}"
        elif t.word == "from" and depth == level:
            where = t
    if where is None:  # not expected from PostgreSQL's grammar
        raise FeatureNotAvailable("CONVERT could not find the FROM clause of its query")
    sep = ", " if select.get("targetList") else " "
    return f"{query[: where.start]}{sep}{columns} {query[where.start :]}"
