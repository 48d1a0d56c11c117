"""Lexing and parse depth: literals that hide statements, and statements too deep to parse.

Literals: the preprocessor read text differently from PostgreSQL (non-ASCII
dollar-quote tags, standard_conforming_strings = off), so a literal could carry a
ThanoSQL statement whose rewrite ran SQL the literal held. The preprocessor must find
statement boundaries, strings, dollar quotes and comments exactly where PostgreSQL
does: checked here against tables of PostgreSQL 15's answers, and by hypothesis
against the server itself (random texts of literals, comments, quotes and non-ASCII
letters, under both settings of standard_conforming_strings).

Depth: one statement crashed the cluster (pglast's parse tree writer overflowed
the C stack of the backend). Deep statements must fail cleanly (SQLSTATE 54001) or
work, through thanosql.execute, thanosql.rewrite and the proxy, with no backend lost.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import pq

from thanosql_pg.errors import ThanoSQLError
from thanosql_pg.preprocessor import rewrite, rewrite_for_wire, split_statements
from thanosql_pg.preprocessor.lexer import LexicalError, lex
from thanosql_pg.preprocessor.literals import decode_string
from thanosql_pg.preprocessor.sqltree import (
    MAX_DEPTH,
    StatementTooComplex,
    append_to_select_list,
    depth_bound,
    split_plain,
)

from .conftest import Sentinel

ROOT = Path(__file__).resolve().parents[2]

# --- the lexer against PostgreSQL 15's answers (tables; no server needed) ------------------------

# A ThanoSQL statement hidden in what PostgreSQL reads as one dollar-quoted literal ($ä$ ... $ä$).
HIDDEN = (
    "SELECT $ä$ $x$; EVALUATE USING m OPTIONS (image_col=E'$\\u00e4$; DROP TABLE victim; --') "
    "AS SELECT 1; SELECT $x$ $ä$"
)
# The same attack for standard_conforming_strings = off: one literal when it is off.
HIDDEN_SCS = "SELECT 'it\\'s; EVALUATE USING m AS SELECT 1; DROP TABLE victim; --'"

# SQL -> the statements PostgreSQL runs (standard_conforming_strings on, then off).
STATEMENTS: list[tuple[str, list[str], list[str]]] = [
    (HIDDEN, [HIDDEN], [HIDDEN]),
    (HIDDEN_SCS, ["SELECT 'it\\'s", "EVALUATE USING m AS SELECT 1", "DROP TABLE victim"], [HIDDEN_SCS]),
    ("SELECT $ä$;$ä$; SELECT 2", ["SELECT $ä$;$ä$", "SELECT 2"], ["SELECT $ä$;$ä$", "SELECT 2"]),
    ("SELECT $é$ $ä$; $é$", ["SELECT $é$ $ä$; $é$"], ["SELECT $é$ $ä$; $é$"]),
    ("SELECT a$x$; SELECT $x$;$x$", ["SELECT a$x$", "SELECT $x$;$x$"], ["SELECT a$x$", "SELECT $x$;$x$"]),
    ("SELECT ä$x$; SELECT $x$;$x$", ["SELECT ä$x$", "SELECT $x$;$x$"], ["SELECT ä$x$", "SELECT $x$;$x$"]),
    ("SELECT $1$x$;$x$", ["SELECT $1$x$;$x$"], ["SELECT $1$x$;$x$"]),  # $1, then a dollar quote
    ("SELECT E'\\'; SELECT 1'", ["SELECT E'\\'; SELECT 1'"], ["SELECT E'\\'; SELECT 1'"]),
    ("SELECT '\\'; SELECT ' -- '", ["SELECT '\\'", "SELECT ' -- '"], ["SELECT '\\'; SELECT '"]),
    ("SELECT 'a'\n'; b'", ["SELECT 'a'\n'; b'"], ["SELECT 'a'\n'; b'"]),  # continued across a newline
    ("SELECT 'a' -- c\r'; b'", ["SELECT 'a' -- c\r'; b'"], ["SELECT 'a' -- c\r'; b'"]),
    ("SELECT B'01'\n'; 10'", ["SELECT B'01'\n'; 10'"], ["SELECT B'01'\n'; 10'"]),
    ("SELECT n'x;'", ["SELECT n'x;'"], ["SELECT n'x;'"]),
    ('SELECT 1 AS "a;""b"; SELECT 2', ['SELECT 1 AS "a;""b"', "SELECT 2"],
     ['SELECT 1 AS "a;""b"', "SELECT 2"]),
    ("SELECT 1 /* a /* ; */ ; */; SELECT 2", ["SELECT 1", "SELECT 2"], ["SELECT 1", "SELECT 2"]),
    ("SELECT 1 -- ; \n; SELECT 2", ["SELECT 1", "SELECT 2"], ["SELECT 1", "SELECT 2"]),
    ("SELECT 1 --; x\r; SELECT 2", ["SELECT 1", "SELECT 2"], ["SELECT 1", "SELECT 2"]),
]


@pytest.mark.parametrize(("sql", "on", "off"), STATEMENTS)
def test_statement_boundaries(sql: str, on: list[str], off: list[str]) -> None:
    assert split_statements(sql) == on
    assert split_statements(sql, standard_conforming_strings=False) == off


# SQL -> PostgreSQL 15's error: SQLSTATE, message, position (standard_conforming_strings on).
LEXICAL_ERRORS: list[tuple[str, str, str, int | None]] = [
    ("SELECT 'abc", "42601", "unterminated quoted string at or near \"'abc\"", 8),
    ("SELECT E'ab\\", "42601", "unterminated quoted string at or near \"E'ab\\\"", 8),
    ("SELECT $a$ x", "42601", 'unterminated dollar-quoted string at or near "$a$ x"', 8),
    ("SELECT $ä$ x $x$", "42601", 'unterminated dollar-quoted string at or near "$ä$ x $x$"', 8),
    ("SELECT /* x /* */", "42601", 'unterminated /* comment at or near "/* x /* */"', 8),
    ('SELECT "ab""cd', "42601", 'unterminated quoted identifier at or near ""ab""cd"', 8),
    ('SELECT ""', "42601", 'zero-length delimited identifier at or near """"', 8),
    ('SELECT U&""', "42601", 'zero-length delimited identifier at or near "U&"""', 8),
    ("SELECT x'1", "42601", "unterminated hexadecimal string literal at or near \"x'1\"", 8),
    ("SELECT b'1", "42601", "unterminated bit string literal at or near \"b'1\"", 8),
    ("SELECT E'\\u0000'", "42601", 'invalid Unicode escape value at or near "\\u0000"', 10),
    ("SELECT E'\\U00110000'", "42601", 'invalid Unicode escape value at or near "\\U00110000"', 10),
    ("SELECT E'\\u12'", "22025", "invalid Unicode escape", 10),
    ("SELECT E'\\uD800'", "42601", "invalid Unicode surrogate pair at or near \"'\"", 16),
    ("SELECT E'\\uD800\\n'", "42601", 'invalid Unicode surrogate pair at or near "\\"', 16),
    ("SELECT E'\\uD800", "42601", "invalid Unicode surrogate pair at end of input", 16),
    ("SELECT E'\\uDC00'", "42601", 'invalid Unicode surrogate pair at or near "\\uDC00"', 10),
    ("SELECT E'\\xff'", "22021", 'invalid byte sequence for encoding "UTF8": 0xff', None),
    ("SELECT E'\\xc3\\x28'", "22021", 'invalid byte sequence for encoding "UTF8": 0xc3 0x28', None),
    ("SELECT E'\\0'", "22021", 'invalid byte sequence for encoding "UTF8": 0x00', None),
    ("SELECT 1ex", "42601", 'trailing junk after numeric literal at or near "1ex"', 8),
    ("SELECT 1e+x", "42601", 'trailing junk after numeric literal at or near "1e+"', 8),
    ("SELECT $1x", "42601", 'trailing junk after parameter at or near "$1x"', 8),
]


@pytest.mark.parametrize(("sql", "sqlstate", "message", "position"), LEXICAL_ERRORS)
def test_lexical_errors_are_postgresql_s(sql: str, sqlstate: str, message: str, position: int | None) -> None:
    with pytest.raises(LexicalError) as info:
        lex(sql)
    assert (info.value.sqlstate, info.value.message, info.value.position) == (sqlstate, message, position)


def test_unicode_strings_are_refused_when_standard_conforming_strings_is_off() -> None:
    with pytest.raises(LexicalError) as info:
        lex("SELECT U&'x'", standard_conforming_strings=False)
    assert (info.value.sqlstate, info.value.position) == ("0A000", 8)


# String constant -> its value (decode_string), with standard_conforming_strings on / off
# (None: no whole constant that way).
VALUES: list[tuple[str, str | None, str | None]] = [
    ("'a\\'", "a\\", None),
    ("'a\\'''", "a\\'", None),
    ("'a\\'''''", "a\\''", None),
    ("'a\\\\b'", "a\\\\b", "a\\b"),
    ("'it''s'", "it's", "it's"),
    ("'\\x41\\101\\u00e4'", "\\x41\\101\\u00e4", "AAä"),
    ("E'\\x41\\101\\u00e4\\ud83d\\ude00\\q\\''", "AAä😀q'", "AAä😀q'"),
    ("E'\\v\\x\\xg\\c3\\303\\244'", "vxxgc3ä", "vxxgc3ä"),
    ("'a' --c\r\n 'b'", "ab", "ab"),
    ("$ä$x$x$ä$", "x$x", "x$x"),
]


@pytest.mark.parametrize(("text", "on", "off"), VALUES)
def test_string_values(text: str, on: str | None, off: str | None) -> None:
    for scs, value in ((True, on), (False, off)):
        if value is None:
            with pytest.raises(LexicalError):
                lex(text, standard_conforming_strings=scs)
        else:
            assert [t.text for t in lex(text, standard_conforming_strings=scs).tokens] == [text]
            assert decode_string(text, standard_conforming_strings=scs) == value


def test_non_ascii_names_are_no_keywords() -> None:
    # "eäcept" must stay one identifier (an ASCII stand-in "excxpt" or "except" would not).
    tokens = lex("SELECT eäcept FROM äbc AS ü").tokens
    assert [(t.name, t.text) for t in tokens] == [("SELECT", "SELECT"), ("IDENT", "eäcept"), ("FROM", "FROM"),
                                                 ("IDENT", "äbc"), ("AS", "AS"), ("IDENT", "ü")]


def test_rewrite_leaves_hidden_statements_alone() -> None:
    assert rewrite_for_wire(HIDDEN) is None
    assert rewrite(HIDDEN) is HIDDEN
    assert rewrite_for_wire(HIDDEN_SCS, standard_conforming_strings=False) is None
    # With the setting on, the EVALUATE is a statement of its own: rewritten where it stands.
    out = rewrite_for_wire(HIDDEN_SCS)
    assert out is not None and out.startswith("SELECT 'it\\'s; SELECT * FROM thanosql.evaluate(")


def test_rewrite_output_is_read_alike_when_standard_conforming_strings_is_off() -> None:
    user = "'x\\'y'"  # the user's constant: x'y in a session with the setting off
    sql = f"PREDICT USING m OPTIONS (image_col='a\\b') AS SELECT {user} AS c"
    out = rewrite(sql, standard_conforming_strings=False)
    strings = [t.text for t in lex(out, standard_conforming_strings=False).tokens if t.name == "SCONST"]
    assert user in strings  # spliced as written, for the session that wrote it
    # The rewrite's own constants mean the same under either setting: E'' when they hold "\".
    ours = [s for s in strings if s != user]
    assert all("\\" not in s or s[0] in "Ee$" for s in ours), ours
    options = next(s for s in ours if "image_col" in s)
    assert decode_string(options) == decode_string(options, standard_conforming_strings=False)
    assert json.loads(decode_string(options)) == {"image_col": "a\b"}  # \b: a backspace when off


# --- hidden statements against the server -------------------------------------------------------


def _victim(conn: psycopg.Connection) -> None:
    role = conn.execute("SELECT current_user").fetchone()[0]
    conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{role}"')  # first on the default search_path
    conn.execute("CREATE TABLE victim (x int)")


def _victim_exists(conn: psycopg.Connection) -> bool:
    return conn.execute("SELECT pg_catalog.to_regclass('victim') IS NOT NULL").fetchone()[0]


@pytest.mark.parametrize(("sql", "scs"), [(HIDDEN, "on"), (HIDDEN_SCS, "off")])
def test_hidden_statements_stay_literal_through_execute(mallory: str,
                                                        connect_as: Callable[..., psycopg.Connection],
                                                        sentinel: Sentinel, sql: str, scs: str) -> None:
    conn = connect_as(mallory)
    _victim(conn)
    conn.execute(f"SET standard_conforming_strings = {scs}")
    rows = conn.execute("SELECT * FROM thanosql.execute(%s)", (sql,)).fetchall()
    assert len(rows) == 1 and "DROP TABLE victim" in next(iter(rows[0][0].values()))
    assert _victim_exists(conn)
    assert conn.execute("SELECT thanosql.rewrite(%s) = %s", (sql, sql)).fetchone()[0]


@pytest.mark.parametrize(("sql", "scs"), [(HIDDEN, "on"), (HIDDEN_SCS, "off")])
def test_hidden_statements_stay_literal_through_the_proxy(mallory: str,
                                                          connect_as: Callable[..., psycopg.Connection],
                                                          sentinel: Sentinel, sql: str, scs: str) -> None:
    conn = connect_as(mallory, via="proxy")
    _victim(conn)
    conn.execute(f"SET standard_conforming_strings = {scs}")
    results, error = simple_query(conn, sql)  # the simple query protocol, as the attack used
    assert error is None and len(results) == 1 and "DROP TABLE victim" in (results[0][0][0] or "")
    assert _victim_exists(conn)


# --- deep statements -------------------------------------------------------------------------------

DEEP = "' || repeat('1+', 100000) || '1"  # inside a SQL string literal: 1+1+...+1
DEEP_STATEMENTS = [
    f"SELECT count(*) FROM thanosql.execute('SELECT {DEEP}')",
    f"SELECT thanosql.rewrite('PREDICT USING m AS SELECT {DEEP}')",
    f"SELECT * FROM thanosql.execute('PREDICT USING m AS SELECT {DEEP}')",
    f"SELECT * FROM thanosql.execute('CONVERT USING m AS SELECT {DEEP} AS x FROM t')",
    f"SELECT * FROM thanosql.execute('BUILD MODEL m USING SimCLR AS SELECT {DEEP}')",
    "SELECT * FROM thanosql.execute('SELECT 1' || repeat(' UNION SELECT 1', 30000))",
    "SELECT * FROM thanosql.execute('SELECT 1 FROM t' || repeat(' JOIN t ON true', 30000))",
]


@pytest.mark.parametrize("sql", DEEP_STATEMENTS)
def test_deep_statements_fail_cleanly(mallory: str, connect_as: Callable[..., psycopg.Connection],
                                      sentinel: Sentinel, sql: str) -> None:
    conn = connect_as(mallory)
    # too deep (54001), or, for texts longer than the lexer reads, too long (54000)
    with pytest.raises((psycopg.errors.StatementTooComplex, psycopg.errors.ProgramLimitExceeded)) as info:
        conn.execute(sql)
    assert info.value.diag.message_hint
    assert sentinel.alive()


@pytest.mark.parametrize("statement", [
    "PREDICT USING m AS SELECT {deep}",
    "CONVERT USING m AS SELECT {deep} AS x FROM t",
    "BUILD MODEL m USING SimCLR AS SELECT {deep}",
    "SELECT * FROM (PREDICT USING m AS SELECT {deep}) AS p",
])
def test_deep_statements_fail_cleanly_through_the_proxy(mallory: str,
                                                        connect_as: Callable[..., psycopg.Connection],
                                                        sentinel: Sentinel, statement: str) -> None:
    conn = connect_as(mallory, via="proxy")
    with pytest.raises(psycopg.errors.StatementTooComplex):
        conn.execute(statement.format(deep="1+" * 100000 + "1"))
    assert conn.execute("SELECT 1").fetchone() == (1,)  # the session goes on


def test_deep_but_reasonable_statements_work(mallory: str, connect_as: Callable[..., psycopg.Connection],
                                             sentinel: Sentinel) -> None:
    conn = connect_as(mallory)
    deep = "SELECT * FROM thanosql.execute('SELECT ' || repeat('1+', 1000) || '1 AS n')"
    assert conn.execute(deep).fetchall() == [({"n": 1001},)]
    # long flat lists are not deep: 30000 values in IN (...)
    big = "SELECT 1 AS n WHERE 1 IN (" + ", ".join(["1"] * 30000) + ")"
    assert conn.execute("SELECT * FROM thanosql.execute(%s)", (big,)).fetchall() == [({"n": 1},)]


def test_execute_splits_and_classifies_like_postgresql() -> None:
    function = "CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; SELECT 2; END"
    sql = f"{function};\nSELECT 'a\\'; b' -- trailing comment"
    assert split_plain(sql, standard_conforming_strings=False) == [
        (function, None), ("SELECT 'a\\'; b' -- trailing comment", "SelectStmt")]
    with pytest.raises(LexicalError):  # with it on, "' -- trailing comment" is unterminated
        split_plain(sql)
    assert split_plain("INSERT INTO t VALUES (1); UPDATE t SET a = 2") == [
        ("INSERT INTO t VALUES (1)", None), ("UPDATE t SET a = 2", "UpdateStmt")]
    with pytest.raises(StatementTooComplex):
        split_plain("SELECT " + "1+" * 6000 + "1")


def test_depth_bound_counts_nesting_not_length() -> None:
    def bound(sql: str) -> int:
        return depth_bound(lex(sql).tokens)

    assert bound("SELECT 1 IN (" + ", ".join(["1"] * 20000) + ")") < 10
    assert bound("VALUES " + ", ".join(["(1, 2)"] * 20000)) < 10
    assert bound("SELECT " + "1+" * 20000 + "1") > MAX_DEPTH
    assert bound("SELECT a, b" + " UNION SELECT a, b" * 6000) >= 6000  # left-deep across the commas
    assert bound("SELECT " + "(" * 4000 + "1" + ")" * 4000) >= 8000


# Deep shapes at the largest size depth_bound lets through (n: levels). The worst ones for
# the C stack of pglast's tree writer are nested subqueries; bison stops the bracketed ones
# near 10000 grammar levels anyway ("memory exhausted", a clean ParseError).
LARGEST_ALLOWED = {
    "1+": (4999, lambda n: "SELECT " + "1+" * n + "1"),
    "::": (4999, lambda n: "SELECT 1" + "::int" * n),
    "UNION": (2499, lambda n: "SELECT 1" + " UNION SELECT 1" * n),
    "UNION lists": (9996, lambda n: "SELECT 1, 1" + " UNION SELECT 1, 1" * n),
    "JOIN": (2499, lambda n: "SELECT * FROM t" + " JOIN t ON true" * n),
    "OPERATOR": (2498, lambda n: "SELECT 1" + " OPERATOR(pg_catalog.+) 1" * n),
    "subquery": (3300, lambda n: "SELECT " + "(SELECT " * n + "1" + ")" * n),
    "EXISTS": (2490, lambda n: "SELECT " + "EXISTS (SELECT " * n + "1" + ")" * n),
    "VALUES": (1999, lambda n: "(VALUES (" * n + "1" + "))" * n),
    "CASE": (1999, lambda n: "SELECT " + "CASE WHEN true THEN " * n + "1" + " END" * n),
    "WITH": (1428, lambda n: "WITH a AS (" * n + "SELECT 1" + ") SELECT 1" * n),
    "FROM (": (1600, lambda n: "SELECT * FROM " + "(SELECT * FROM " * n + "t" + ") a" * n),
    "ANY": (1249, lambda n: "SELECT " + "1 = ANY(ARRAY[" * n + "1" + "])" * n),
}

BISON_BOUNDED = ("subquery", "EXISTS", "FROM (")  # sized just under bison's limit instead


def test_largest_allowed_trees_fit_in_2_mb_of_stack() -> None:
    """What check_depth allows, pglast writes out within a quarter of a backend's 8 MB stack."""
    for shape, (n, make) in LARGEST_ALLOWED.items():
        assert depth_bound(lex(make(n)).tokens) <= MAX_DEPTH, shape
        if shape not in BISON_BOUNDED:  # n is the largest allowed
            assert depth_bound(lex(make(n + 2)).tokens) > MAX_DEPTH, shape
    code = (
        "import sys\n"
        "from pglast import parser as pg\n"
        "from tests.security.test_lexing import LARGEST_ALLOWED\n"
        "for shape, (n, make) in LARGEST_ALLOWED.items():\n"
        "    pg.parse_sql_json(make(n))\n"
        "print('ok')\n"
    )

    def small_stack() -> None:
        resource.setrlimit(resource.RLIMIT_STACK, (2 << 20, resource.getrlimit(resource.RLIMIT_STACK)[1]))

    done = subprocess.run([sys.executable, "-c", code], preexec_fn=small_stack, cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", (done.returncode, done.stderr[-2000:])


def test_append_to_select_list() -> None:
    cols = "tableoid AS o"
    assert (append_to_select_list("SELECT * FROM t WHERE a > 1\n", cols)
            == "SELECT * , tableoid AS o FROM t WHERE a > 1\n")
    assert append_to_select_list("TABLE t", cols) == "SELECT *, tableoid AS o FROM t"
    assert (append_to_select_list("SELECT a IS DISTINCT FROM b -- c\nFROM ONLY s.t", cols)
            == "SELECT a IS DISTINCT FROM b -- c\n, tableoid AS o FROM ONLY s.t")
    assert append_to_select_list("SELECT 'FROM' FROM t", cols) == "SELECT 'FROM' , tableoid AS o FROM t"
    for bad in ("SELECT 1 UNION SELECT 2", "SELECT * FROM t, u"):
        with pytest.raises(ThanoSQLError) as info:
            append_to_select_list(bad, cols)
        assert info.value.sqlstate == "0A000"
    with pytest.raises(StatementTooComplex):
        append_to_select_list("SELECT " + "1+" * 100000 + "1 FROM t", cols)


# --- property tests: the lexer against the server ------------------------------------------------


Rows = list[list[str | None]]


class ServerError(NamedTuple):
    message: str
    position: int | None  # 1-based
    sqlstate: str


def simple_query(conn: psycopg.Connection, text: str) -> tuple[list[Rows], ServerError | None]:
    """Run ``text`` with the simple query protocol: the rows of each statement's result, and
    the error that stopped it, or None."""
    pgconn = conn.pgconn
    pgconn.send_query(text.encode())
    while pgconn.flush():
        pass
    results: list[Rows] = []
    error: ServerError | None = None
    while (res := pgconn.get_result()) is not None:
        if res.status == pq.ExecStatus.TUPLES_OK:
            results.append([[None if (v := res.get_value(r, c)) is None else v.decode()
                             for c in range(res.nfields)] for r in range(res.ntuples)])
        elif res.status == pq.ExecStatus.FATAL_ERROR:
            message = (res.error_field(pq.DiagnosticField.MESSAGE_PRIMARY) or b"").decode()
            position = res.error_field(pq.DiagnosticField.STATEMENT_POSITION)
            sqlstate = (res.error_field(pq.DiagnosticField.SQLSTATE) or b"").decode()
            error = ServerError(message, int(position) if position else None, sqlstate)
    return results, error


# Pieces of literal content: what confuses lexers (quotes, backslashes, dollar tags with and
# without non-ASCII letters, comment starts, ";") and ThanoSQL text that must stay inside.
CONTENT = ["a", "x", "ä", "é", "한", "😀", " ", "\n", "\t", "'", '"', "$", ";", "\\", "-", "/", "*", "E",
           "$x$", "$ä$", "$é$", "$$", "--", "/*", "*/", "''", "\\'", "U&", "$1",
           "; EVALUATE USING m AS SELECT 1; --", "LIST MODELS", "); DROP TABLE victim; --"]
TAGS = ["", "x", "ä", "é", "q1", "_", "tag", "x9"]
# Kinds of string constants, dollar quotes (the likeliest place to hide a statement) drawn most often.
KINDS = ["plain", "plain", "E", "dollar", "dollar", "dollar", "N", "continued", "U&", "bits"]
content = st.lists(st.sampled_from(CONTENT), max_size=8).map("".join)
# A comment's text: anything but line ends (--) or comment marks (/* */, nested separately).
COMMENT = ["a", "ä", " ", "'", '"', "$", "$x$", ";", "\\", "-", "LIST MODELS", "E'", "$ä$"]
comment_text = st.lists(st.sampled_from(COMMENT), max_size=5).map("".join)


@st.composite
def gap(draw: st.DrawFn, continuation: bool = False) -> str:
    """Whitespace and comments between tokens; for ``continuation`` (between the parts of
    one string constant), whitespace holding a newline, and -- comments, only."""
    pieces = [st.sampled_from([" ", "\t", "\n", "\r", "\f", "  "]), comment_text.map(lambda t: f"--{t}\n")]
    if not continuation:
        pieces.append(st.tuples(comment_text, comment_text, st.booleans()).map(
            lambda p: f"/*{p[0]}/*{p[1]}*/*/" if p[2] else f"/*{p[0]}*/"))
    text = "".join(draw(st.lists(st.one_of(*pieces), max_size=3)))
    return text + "\n" if continuation and "\n" not in text and "\r" not in text else text


def _e_escape(c: str, how: int) -> str:
    """One character in an E'' string, spelled one of several ways."""
    code = ord(c)
    if c == "'":
        return ["''", "\\'", "\\x27", "\\047"][how % 4]
    if c == "\\":
        return ["\\\\", "\\x5c", "\\134"][how % 3]
    if how % 5 == 1 and code < 0x80:
        return f"\\x{code:02x}"
    if how % 5 == 2 and code < 0x80:
        return f"\\{code:03o}"
    if how % 5 == 3:
        if code > 0xFFFF:
            high, low = 0xD800 + ((code - 0x10000) >> 10), 0xDC00 + ((code - 0x10000) & 0x3FF)
            return f"\\u{high:04x}\\u{low:04X}"
        return f"\\u{code:04x}"
    if how % 5 == 4:
        if c in "\n\t":
            return {"\n": "\\n", "\t": "\\t"}[c]
        if c not in "bfnrtux01234567UX":
            return "\\" + c  # any other character escapes to itself
    return c


@st.composite
def literal(draw: st.DrawFn, scs: bool) -> tuple[str, str | None]:
    """A string constant of some kind, and the value PostgreSQL gives it (None: not compared)."""
    value = draw(content)
    kind = draw(st.sampled_from(KINDS))
    if kind in ("plain", "N", "continued"):
        body = value.replace("\\", "\\\\") if not scs else value
        body = body.replace("'", draw(st.sampled_from(["''", "\\'"])) if not scs else "''")
        if kind == "continued":
            more = draw(content)
            body2 = (more.replace("\\", "\\\\") if not scs else more).replace("'", "''")
            return f"'{body}'{draw(gap(continuation=True))}'{body2}'", value + more
        return ("N" if kind == "N" else "") + f"'{body}'", value
    if kind == "E":
        hows = draw(st.lists(st.integers(0, 59), min_size=len(value), max_size=len(value)))
        return draw(st.sampled_from(["E", "e"])) + "'" + "".join(map(_e_escape, value, hows)) + "'", value
    if kind == "dollar":
        delim = "$" + draw(st.sampled_from(TAGS)) + "$"
        if (value + delim).find(delim) != len(value):
            value = value.replace("$", "")
        return delim + value + delim, value
    if kind == "U&" and scs:
        spelled = "".join("''" if c == "'" else "\\\\" if c == "\\" else
                          (f"\\+{ord(c):06X}" if draw(st.booleans()) else c) for c in value)
        return f"U&'{spelled}'", None  # a USCONST: the grammar decodes it, not the lexer
    bits = draw(st.sampled_from(["B'0101'", "X'1F'", "b''", "x'AbC'", "B'01'\n'10'"]))
    return bits, None


@st.composite
def script(draw: st.DrawFn, scs: bool) -> tuple[str, list[list[str | None]]]:
    """Statements SELECT <constants>, separated by ";" (and empty statements), with
    whitespace and comments anywhere; and each statement's expected values."""
    text = draw(gap())
    expected: list[list[str | None]] = []
    for n in range(draw(st.integers(1, 4))):
        if n:
            text += draw(gap()) + ";" * draw(st.integers(1, 2)) + draw(gap())
        values: list[str | None] = []
        text += "SELECT "
        for k in range(draw(st.integers(1, 3))):
            if k:
                text += draw(gap()) + "," + draw(gap())
            sql, value = draw(literal(scs))
            text += sql
            values.append(value)
            if draw(st.booleans()):
                alias = draw(content).replace('"', '""').replace("\\", "") or "a"
                text += draw(gap()) + 'AS "' + alias + '"'
        expected.append(values)
    return text + draw(st.sampled_from(["", ";", " -- end", "/* end */", ";\n"])), expected


# Fragments of texts PostgreSQL may reject: unbalanced quotes, stray escapes, junk.
SOUP = ["SELECT ", "'", "''", "E'", "e'", "N'", "U&'", "B'", "X'", '"', 'U&"', "$$", "$x$", "$ä$", "$1",
        "$", "--", "/*", "*/", "\\", "\\'", "\\u12", "\\u00e4", "\\uD800", "\\uDC00", "\\x", "\\xff", "\\0",
        ";", "\n", " ", "\r", "\t", "\v", "ä", "x", "1", "1e", "+", ".", ",", "(", ")", "a$", "é$x$",
        "EVALUATE USING m AS SELECT 1", "LIST MODELS"]
soup = st.lists(st.sampled_from(SOUP), min_size=1, max_size=14).map("".join)
LEXICAL = ("unterminated ", "zero-length delimited identifier", "invalid Unicode", "trailing junk",
           "invalid byte sequence", "unsafe use of string constant")
# Errors of PostgreSQL's grammar (parser.c decodes U&'' escapes), not of its lexer: the
# preprocessor leaves those to the server, as they hide no statement boundary.
UNICODE_ESCAPES = ("invalid Unicode escape", "invalid Unicode escape value", "invalid Unicode surrogate pair")

PROPERTY = settings(max_examples=200, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.fixture
def lexing_conn(mallory: str, connect_as: Callable[..., psycopg.Connection]) -> psycopg.Connection:
    """An ordinary role's connection: the texts run for real (they only SELECT constants)."""
    return connect_as(mallory)


@pytest.mark.parametrize("scs", [True, False], ids=["scs_on", "scs_off"])
def test_property_statements_and_values_match_the_server(lexing_conn: psycopg.Connection, scs: bool) -> None:
    lexing_conn.execute(f"SET standard_conforming_strings = {'on' if scs else 'off'}")
    lexing_conn.execute("SET escape_string_warning = off")

    @PROPERTY
    @given(script(scs))
    def check(case: tuple[str, list[list[str | None]]]) -> None:
        text, expected = case
        results, error = simple_query(lexing_conn, text)
        assert error is None, (text, error)
        assert len(results) == len(expected), text
        # The server's values of the constants whose value is compared (strings)...
        server = [v for rows, exp in zip(results, expected, strict=True)
                  for v, e in zip(rows[0], exp, strict=True) if e is not None]
        # ... are what the generator meant ...
        assert server == [e for exp in expected for e in exp if e is not None], text
        # ... and what the preprocessor reads: as many statements, the same string values,
        # and no ThanoSQL statement found in a text that holds none outside literals.
        assert len(split_statements(text, standard_conforming_strings=scs)) == len(results), text
        strings = [decode_string(t.text, standard_conforming_strings=scs)
                   for t in lex(text, standard_conforming_strings=scs).tokens if t.name == "SCONST"]
        assert strings == server, text
        assert rewrite(text, standard_conforming_strings=scs) is text

    check()


@pytest.mark.parametrize("scs", [True, False], ids=["scs_on", "scs_off"])
def test_property_lexical_errors_match_the_server(lexing_conn: psycopg.Connection, scs: bool) -> None:
    lexing_conn.execute(f"SET standard_conforming_strings = {'on' if scs else 'off'}")
    lexing_conn.execute("SET escape_string_warning = off")

    @PROPERTY
    @given(soup)
    def check(text: str) -> None:
        results, error = simple_query(lexing_conn, text)
        try:
            tokens = lex(text, standard_conforming_strings=scs).tokens
            ours: LexicalError | None = None
        except LexicalError as exc:
            ours = exc
        grammar = error is not None and (error.message.startswith("syntax error") or (
            error.message in UNICODE_ESCAPES and error.sqlstate == "42601"))
        if error is not None and not grammar and error.message.startswith(LEXICAL):
            # PostgreSQL's lexer stopped: so must ours, with its message, at its position.
            assert ours is not None, (text, error)
            assert (ours.message, ours.position, ours.sqlstate) == error, text
        elif ours is not None:
            # Ours stopped where PostgreSQL's grammar had stopped earlier already.
            assert error is not None and grammar and not results, (text, ours.message, error)
            assert error.position is not None and error.position <= ours.index + 1, (text, error, ours)
        elif error is None:
            assert len(split_statements(text, standard_conforming_strings=scs)) == len(results), text
        elif grammar and error.message.startswith("syntax error"):
            # The grammar's complaint is about one of our tokens (or the end).
            assert error.position is not None, (text, error)
            assert error.position - 1 in {t.start for t in tokens} | {len(text)}, (text, error)

    check()

