"""Finds the ThanoSQL statements in SQL text and parses them into ``ast`` nodes.

A ThanoSQL statement starts either where a SQL statement starts (the start
of the text or after a top-level ``;``) or right after an opening parenthesis
that can hold a subquery (``FROM (``, ``AS (`` of a CTE, ``IN (``, ...). In
the first case it extends to the next top-level ``;`` or the end of the text,
in the second to the matching ``)``. The query after AS is checked with
PostgreSQL's own grammar (pglast's parser) and may itself hold nested
ThanoSQL statements in parentheses.

Syntax is checked before meaning: a statement is first read completely
(names, OPTIONS, query), then its algorithm and options are checked against
the registry. Every error carries the 1-based character position, in the
text given to :func:`parse`, of what it is about.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from pglast import parser as pg

from thanosql_pg.algorithms import registry
from thanosql_pg.errors import (
    FeatureNotAvailable,
    InvalidOption,
    NumericValueOutOfRange,
    ThanoSQLError,
    TokenLimitExceeded,
)
from thanosql_pg.errors import SyntaxError as SQLSyntaxError
from thanosql_pg.preprocessor import ast
from thanosql_pg.preprocessor.lexer import (
    LexicalError,
    Token,
    check_text,
    lex,
    might_contain_ml,
    tokenize,
    unshadow_message,
)
from thanosql_pg.preprocessor.literals import (
    decode_string,
    fold_identifier,
    parse_integer,
    parse_number,
    quote_ident_if_needed,
)
from thanosql_pg.preprocessor.sqltree import check_depth, first_statement_kind, load_shallow, parse_json

LPAREN, RPAREN, SEMI, COMMA, EQ, MINUS, PLUS = (
    "ASCII_40",
    "ASCII_41",
    "ASCII_59",
    "ASCII_44",
    "ASCII_61",
    "ASCII_45",
    "ASCII_43",
)
_NAME_KINDS = frozenset({"UNRESERVED_KEYWORD", "COL_NAME_KEYWORD", "TYPE_FUNC_NAME_KEYWORD"})

GRAMMAR = {
    "build": "BUILD MODEL <name> USING <algorithm> [OPTIONS (...)] AS <query>",
    "fit": "FIT MODEL <name> USING <model> [OPTIONS (...)] AS <query>",
    "predict": "PREDICT USING <model> [OPTIONS (...)] AS <query>",
    "evaluate": "EVALUATE USING <model> [OPTIONS (...)] AS <query>",
    "convert": "CONVERT USING <model> [OPTIONS (...)] AS <query>",
    "search": "SEARCH IMAGE USING <model> OPTIONS (search_input=..., emb_col=...) AS <query>",
    "list": "LIST MODEL",
    "delete": "DELETE MODEL <name>",
    "drop": "DROP MODEL [IF EXISTS] <name>",
    "describe": "DESCRIBE MODEL <name>",
}

# Where a SQL statement starts, the first word alone marks a ThanoSQL statement
# (none of these starts a PostgreSQL statement), except DELETE and DROP, which
# need MODEL next. After "(", two words are needed: "(predict using", ...
_STATEMENT_WORDS = frozenset({"build", "fit", "predict", "evaluate", "convert", "search", "list", "describe"})
_SECOND_WORDS: dict[str, frozenset[str]] = {
    "build": frozenset({"model"}),
    "fit": frozenset({"model"}),
    "predict": frozenset({"using"}),
    "evaluate": frozenset({"using"}),
    "convert": frozenset({"using"}),
    "search": frozenset({"image", "text", "audio", "video"}),
    "list": frozenset({"model", "models"}),
    "describe": frozenset({"model"}),
    "delete": frozenset({"model"}),
    "drop": frozenset({"model"}),
}

_QUERY_KINDS: dict[str, type[ast.QueryStatement]] = {
    "predict": ast.Predict,
    "evaluate": ast.Evaluate,
    "convert": ast.Convert,
    "search": ast.SearchImage,
}


def parse(sql: str, *, standard_conforming_strings: bool = True, max_tokens: int | None = None
          ) -> list[ast.Statement]:
    """The outermost ThanoSQL statements in ``sql``, in order (nested ones hang below).

    ``standard_conforming_strings``: the session's setting, which decides whether
    backslashes escape in ``'...'`` (off) or not (on), and so where strings end.
    Plain SQL yields an empty list. Raises ThanoSQLError with a position on errors.
    A text the lexer rejects raises only if a ThanoSQL statement starts before
    the bad spot; otherwise it is plain SQL for the server to reject.
    ``max_tokens`` bounds the tokens read (lexer.lex): a longer text raises
    TokenLimitExceeded (54000) when a ThanoSQL statement starts in its first
    ``max_tokens`` tokens (StatementTooComplex, 54001, when these are too deep
    already), and is plain SQL otherwise, like one the lexer rejects.
    """
    if not might_contain_ml(sql):
        return []
    check_text(sql)
    scs = standard_conforming_strings
    try:
        tokens, shadow = lex(sql, standard_conforming_strings=scs, max_tokens=max_tokens)
    except TokenLimitExceeded as exc:
        head = Parser(sql, exc.tokens, exc.shadow, scs)
        k = head.first_ml_statement()
        if k < 0:
            return []
        head.check_depth_from(k)  # too deep already: 54001, as without the limit
        raise
    except LexicalError as exc:
        prefix = sql[: exc.start]
        try:
            head, head_shadow = lex(prefix, standard_conforming_strings=scs, max_tokens=max_tokens)
        except TokenLimitExceeded as limit:
            head, head_shadow = limit.tokens, limit.shadow  # a ThanoSQL statement in these starts before
        except LexicalError:
            raise exc from None
        if Parser(prefix, head, head_shadow, scs).has_ml_statement():
            raise
        return []
    return Parser(sql, tokens, shadow, scs).find(0, len(tokens), top=True)


def split_statements(sql: str, *, standard_conforming_strings: bool = True) -> list[str]:
    """The SQL statements of ``sql`` (split at top-level ``;``), each from its first
    token to its last, comments around them and empty statements left out."""
    tokens = tokenize(sql, standard_conforming_strings=standard_conforming_strings)
    out: list[str] = []
    first: Token | None = None
    last: Token | None = None
    depth = 0
    for t in tokens:
        if t.name == SEMI and depth == 0:
            if first is not None and last is not None:
                out.append(sql[first.start : last.end])
            first = last = None
            continue
        if t.name == LPAREN:
            depth += 1
        elif t.name == RPAREN and depth:
            depth -= 1
        if first is None:
            first = t
        last = t
    if first is not None and last is not None:
        out.append(sql[first.start : last.end])
    return out


class Parser:
    """One text's tokens, with parenthesis matching precomputed. ``shadow`` is the
    lexer's same-length ASCII stand-in for ``sql`` (see lexer.py); ``scs`` the
    session's standard_conforming_strings."""

    def __init__(self, sql: str, tokens: list[Token], shadow: str, scs: bool = True) -> None:
        self.sql = sql
        self.tokens = tokens
        self.shadow = shadow
        self.scs = scs
        n = len(tokens)
        self.match = [-1] * n  # for "(": the index of its ")"
        self.depth = [0] * n  # open parentheses around each token
        stack: list[int] = []
        for i, t in enumerate(tokens):
            if t.name == LPAREN:
                self.depth[i] = len(stack)
                stack.append(i)
                continue
            if t.name == RPAREN and stack:
                self.match[stack.pop()] = i
            self.depth[i] = len(stack)

    # --- finding statements ------------------------------------------------------

    def _word(self, i: int) -> str | None:
        return self.tokens[i].word if i < len(self.tokens) else None

    def _starts_ml(self, k: int, after_paren: bool) -> bool:
        word = self.tokens[k].word
        if word is None:
            return False
        if not after_paren and word in _STATEMENT_WORDS:
            return True
        second = _SECOND_WORDS.get(word)
        return second is not None and self._word(k + 1) in second

    def _subquery_paren(self, k: int) -> bool:
        """Can the "(" at ``k`` open a subquery? Not after a name: ``f(``, ``t (col ...``."""
        if k == 0:
            return True
        prev = self.tokens[k - 1]
        if prev.name in ("IDENT", "UIDENT"):
            return False
        return not (prev.kind == "UNRESERVED_KEYWORD" and prev.word != "materialized")

    def has_ml_statement(self) -> bool:
        """Does a ThanoSQL statement start anywhere (no parsing, no errors)?"""
        return self.first_ml_statement() >= 0

    def first_ml_statement(self) -> int:
        """The index of the first token of the first ThanoSQL statement, or -1."""
        start: str | None = "statement"
        for k in range(len(self.tokens)):
            if start is not None and self._starts_ml(k, start == "paren"):
                return k
            start = self._start_after(k, top=True)
        return -1

    def check_depth_from(self, k: int) -> None:
        """StatementTooComplex if the tokens of the statement starting at ``k`` (to a
        top-level ``;``) are already too deep to parse: what parsing all of them would
        say first (sqltree.check_depth on the query after AS)."""
        end = k
        while end < len(self.tokens) and not (self.tokens[end].name == SEMI and self.depth[end] == 0):
            end += 1
        query = next((j + 1 for j in range(k, end) if self.tokens[j].word == "as"), k)
        check_depth(self.tokens[k:end], self.tokens[min(query, end - 1)].position)

    def _start_after(self, k: int, top: bool) -> str | None:
        t = self.tokens[k]
        if t.name == LPAREN and self._subquery_paren(k):
            return "paren"
        if top and t.name == SEMI and self.depth[k] == 0:
            return "statement"
        return None

    def find(self, lo: int, hi: int, top: bool) -> list[ast.Statement]:
        """Parse the outermost ThanoSQL statements among tokens[lo:hi].

        ``top``: the range is whole SQL text, where statements also start at
        ``lo`` and after a top-level ``;``; otherwise (a query after AS) only
        after "(".
        """
        found: list[ast.Statement] = []
        start: str | None = "statement" if top else None
        k = lo
        while k < hi:
            if start is not None and self._starts_ml(k, start == "paren"):
                if start == "paren":
                    end = self.match[k - 1]
                    if end < 0:
                        raise SQLSyntaxError(
                            "syntax error at end of input",
                            hint=f"Close the parenthesis opened before {self.tokens[k].text}.",
                            position=len(self.sql) + 1,
                        )
                else:
                    end = k
                    while end < hi and not (self.tokens[end].name == SEMI and self.depth[end] == 0):
                        end += 1
                found.append(self.statement(k, end, in_parens=start == "paren"))
                k = end
                start = None
                continue
            start = self._start_after(k, top)
            k += 1
        return found

    # --- one statement -----------------------------------------------------------

    def statement(self, k: int, end: int, in_parens: bool) -> ast.Statement:
        first = self.tokens[k]
        kind = first.word or ""
        cur = _Cursor(self, k + 1, end, GRAMMAR[kind])
        common: dict[str, Any] = {
            "start": first.start,
            "end": self.tokens[end - 1].end,
            "position": first.position,
            "nested_in_parens": in_parens,
        }
        if kind in ("build", "fit"):
            return self._train(kind, cur, common)
        if kind in _QUERY_KINDS:
            return self._use(kind, cur, common)
        if kind == "list":
            cur.expect_word("model", "models")
            cur.expect_end()
            return ast.ListModels(**common)
        cur.expect_word("model")
        if kind == "describe":
            model, _ = cur.identifier("a model name")
            cur.expect_end()
            return ast.DescribeModel(**common, model=model)
        if_exists = False
        if cur.at_word("if") and self._word(cur.i + 1) == "exists" and cur.i + 1 < cur.end:
            cur.i += 2
            if_exists = True
        model, _ = cur.identifier("a model name")
        cur.expect_end()
        return ast.DeleteModel(**common, model=model, if_exists=if_exists)

    def _train(self, kind: str, cur: _Cursor, common: dict[str, Any]) -> ast.Statement:
        cur.expect_word("model")
        model, _ = cur.identifier("a model name")
        cur.expect_word("using")
        using, using_tok = cur.identifier("an algorithm name" if kind == "build" else "a model name")
        items, _ = self._options(cur)
        _params_only_in(items, ())
        query, first_param = self._query(cur, kind)
        _no_params(first_param, GRAMMAR[kind].split(" <")[0])
        if kind == "build":
            try:
                algo = registry.lookup(using if using_tok.word is None else using_tok.text)
                registry.require_available(algo)
            except ThanoSQLError as exc:
                exc.position = using_tok.position
                raise
            normalized = _normalize("build", items, algo.family)
            return ast.BuildModel(
                **common,
                model=model,
                algorithm=algo.name,
                options=tuple(items),
                normalized=normalized,
                query=query,
            )
        normalized = _normalize("fit", items, None)
        return ast.FitModel(
            **common,
            model=model,
            base_model=using,
            options=tuple(items),
            normalized=normalized,
            query=query,
        )

    def _use(self, kind: str, cur: _Cursor, common: dict[str, Any]) -> ast.Statement:
        if kind == "search":
            what = cur.next("IMAGE")
            if what.word != "image":
                if what.word in _SECOND_WORDS["search"]:
                    raise FeatureNotAvailable(
                        f"SEARCH {what.text.upper()} is not supported",
                        hint="Only SEARCH IMAGE is available.",
                        position=what.position,
                    )
                raise cur.error_at(what, "IMAGE")
        cur.expect_word("using")
        model, _ = cur.identifier("a model name")
        items, opt_tok = self._options(cur)
        _params_only_in(items, ("search_input",) if kind == "search" else ())
        query, first_param = self._query(cur, kind)
        normalized = _normalize(kind, items, None)
        where = opt_tok.position if opt_tok is not None else common["position"]
        if kind == "predict":
            _nonempty(normalized, items, "result_col", where)
            _nonempty(normalized, items, "table_name", where)
            if normalized.get("table_name") is not None:
                _no_params(first_param, "PREDICT ... OPTIONS (table_name=...)")
        elif kind == "search":
            for name in ("search_input", "emb_col"):
                if name not in normalized:
                    raise InvalidOption(
                        f'option "{name}" is required for SEARCH IMAGE',
                        hint=f"Add {name}=... to OPTIONS. The syntax is: {GRAMMAR['search']}",
                        position=where,
                    )
            _nonempty(normalized, items, "emb_col", where)
            _nonempty(normalized, items, "result_col", where)
            normalized.setdefault("search_by", "image")
        else:
            _no_params(first_param, kind.upper())
        node = _QUERY_KINDS[kind]
        return node(**common, model=model, options=tuple(items), normalized=normalized, query=query)

    # --- OPTIONS -----------------------------------------------------------------

    def _options(self, cur: _Cursor) -> tuple[list[ast.OptionItem], Token | None]:
        """``OPTIONS (a=1, b='x')`` or ``OPTIONS ((a=1), (b='x'))``, or nothing."""
        if not cur.at_word("options"):
            return [], None
        opt_tok = cur.next("OPTIONS")
        cur.expect_punct(LPAREN, '"("')
        items: list[ast.OptionItem] = []
        self._option_list(cur, items)
        return items, opt_tok

    def _option_list(self, cur: _Cursor, items: list[ast.OptionItem]) -> None:
        """Items up to and including the closing ")"; an item may be a parenthesized list."""
        if cur.at_punct(RPAREN):
            cur.next(")")
            return
        while True:
            if cur.at_punct(LPAREN):
                cur.next("(")
                self._option_list(cur, items)
            else:
                name, name_tok = cur.identifier("an option name")
                cur.expect_punct(EQ, '"="')
                value = self._value(cur)
                items.append(ast.OptionItem(name=name, value=value, position=name_tok.position))
            t = cur.next('"," or ")"')
            if t.name == COMMA:
                continue
            if t.name == RPAREN:
                return
            raise cur.error_at(t, '"," or ")"')

    def _value(self, cur: _Cursor) -> Any:
        t = cur.next("a value")
        sign: Token | None = None
        if t.name in (MINUS, PLUS):
            sign = t
            t = cur.next("a number")
            if t.name not in ("ICONST", "FCONST"):
                raise cur.error_at(t, "a number")
        if t.name == "ICONST":
            value: Any = parse_integer(t.text)
        elif t.name == "FCONST":
            value = parse_number(t.text)
            if isinstance(value, float) and not math.isfinite(value):
                raise NumericValueOutOfRange(
                    f'value "{t.text}" is out of range for type double precision', position=t.position)
        elif t.name == "SCONST" or (t.name == "NCHAR" and cur.at_punct("SCONST")):
            if t.name == "NCHAR":
                t = cur.next("a string")
            value = decode_string(t.text, standard_conforming_strings=self.scs)
        elif t.name == "IDENT" and t.word is None:
            value = t.text[1:-1].replace('""', '"')  # "Quoted" value: a string, as written
        elif t.word in ("true", "false"):
            value = t.word == "true"
        elif t.word in ("none", "null"):
            value = None
        elif t.name == "PARAM":
            value = ast.Param(number=int(t.text[1:]), position=t.position)
        elif t.word is not None:
            value = t.word  # a bare word is a string (folded like an identifier)
        else:
            raise cur.error_at(t, "a value (a 'string', a number, True, False or None)")
        if sign is not None and sign.text == "-":
            value = -value
        return value

    # --- the query after AS --------------------------------------------------------

    def _query(self, cur: _Cursor, kind: str) -> tuple[ast.Query, int | None]:
        """The query after AS, checked; and the position of its first $n parameter."""
        cur.expect_word("as")
        lo, hi = cur.i, cur.end
        if lo >= hi:
            raise cur.error_here("a query after AS")
        first_param: int | None = None
        for j in range(lo, hi):
            t = self.tokens[j]
            if t.name == SEMI:
                raise cur.error_at(t, "a single query (no ;)")
            if t.name == "PARAM" and first_param is None:
                first_param = t.position
        nested = self.find(lo, hi, top=False)
        start, end = self.tokens[lo].start, self.tokens[hi - 1].end
        text = self.sql[start:end]
        # pglast checks the lexer's shadow (its literals are filler: scs-proof), with
        # same-length stand-ins for nested statements: error positions stay valid.
        check = self.shadow[start:end]
        inner: list[Token] = []  # the tokens pglast will see, for the depth check
        pos = lo
        if nested:
            parts: list[str] = []
            at = start
            for n in nested:
                parts.append(self.shadow[at : n.start])
                parts.append("SELECT 1".ljust(n.end - n.start))
                at = n.end
                while self.tokens[pos].start < n.start:
                    inner.append(self.tokens[pos])
                    pos += 1
                while pos < hi and self.tokens[pos].start < n.end:
                    pos += 1
            parts.append(self.shadow[at:end])
            check = "".join(parts)
        inner.extend(self.tokens[pos:hi])
        select = self._parse_select(check, start, end, inner)
        source = _source_table(select, self._names_at) if kind == "convert" else None
        return ast.Query(
            text=text, start=start, end=end, nested=tuple(nested), source_table=source
        ), first_param

    def _parse_select(self, check: str, start: int, end: int, tokens: Sequence[Token]) -> _Select:
        """Check the query with PostgreSQL's grammar (``check``: its shadow, ``tokens``
        what pglast will see); error positions become positions in the user's text."""
        try:
            tree = parse_json(check, tokens, start + 1)
        except pg.ParseError as exc:
            index = exc.args[1]
            message = unshadow_message(exc.args[0], index, self.sql[start:end])
            position = start + index + 1 if index is not None else end + 1
            raise SQLSyntaxError(message, position=position) from None
        # No ";" in the query (checked before), so the grammar found one statement.
        if first_statement_kind(tree) != "SelectStmt":
            raise SQLSyntaxError(
                "the query after AS must be a SELECT, VALUES or TABLE query",
                position=start + 1,
            )
        return _Select(tree, start)

    def _names_at(self, index: int) -> list[str]:
        """The parts of the (dotted) name whose first token starts at ``index``."""
        parts: list[str] = []
        k = next((j for j, t in enumerate(self.tokens) if t.start == index), None)
        while k is not None and k < len(self.tokens):
            t = self.tokens[k]
            if t.name == "IDENT" and t.word is None:
                parts.append(t.text[1:-1].replace('""', '"'))
            elif t.word is not None:
                parts.append(fold_identifier(t.text))
            else:
                break
            if k + 1 < len(self.tokens) and self.tokens[k + 1].text == ".":
                k += 2
            else:
                break
        return parts


class _Cursor:
    """Reads the tokens of one statement, tokens[i:end]."""

    def __init__(self, parser: Parser, i: int, end: int, grammar: str) -> None:
        self.p = parser
        self.i = i
        self.end = end
        self.grammar = grammar

    def peek(self) -> Token | None:
        return self.p.tokens[self.i] if self.i < self.end else None

    def at_word(self, *words: str) -> bool:
        t = self.peek()
        return t is not None and t.word in words

    def at_punct(self, name: str) -> bool:
        """Is the next token of this kind (``ASCII_40`` for "(", ``SCONST``, ...)?"""
        t = self.peek()
        return t is not None and t.name == name

    def next(self, expected: str) -> Token:
        t = self.peek()
        if t is None:
            raise self.error_here(expected)
        self.i += 1
        return t

    def expect_word(self, *words: str) -> Token:
        shown = " or ".join(w.upper() for w in words)
        t = self.next(shown)
        if t.word not in words:
            raise self.error_at(t, shown)
        return t

    def expect_punct(self, name: str, shown: str) -> Token:
        t = self.next(shown)
        if t.name != name:
            raise self.error_at(t, shown)
        return t

    def expect_end(self) -> None:
        t = self.peek()
        if t is not None:
            raise self.error_at(t, "the end of the statement")

    def identifier(self, what: str) -> tuple[str, Token]:
        """A name: an identifier (folded unless quoted) or a non-reserved keyword."""
        t = self.next(what)
        if t.name == "IDENT":
            value = t.word if t.word is not None else t.text[1:-1].replace('""', '"')
        elif t.kind in _NAME_KINDS and t.word is not None:
            value = t.word
        else:
            raise self.error_at(t, what)
        return value, t

    def error_at(self, t: Token, expected: str) -> SQLSyntaxError:
        return SQLSyntaxError(
            f'syntax error at or near "{t.text}"',
            hint=f"Expected {expected}. The syntax is: {self.grammar}",
            position=t.position,
        )

    def error_here(self, expected: str) -> SQLSyntaxError:
        """An error at the current token, or at what ends the statement."""
        tokens = self.p.tokens
        if self.i < self.end:
            return self.error_at(tokens[self.i], expected)
        if self.end < len(tokens):
            return self.error_at(tokens[self.end], expected)
        return SQLSyntaxError(
            "syntax error at end of input",
            hint=f"Expected {expected}. The syntax is: {self.grammar}",
            position=len(self.p.sql) + 1,
        )


# --- checks ----------------------------------------------------------------------


def _normalize(statement: str, items: list[ast.OptionItem], family: registry.Family | None) -> dict[str, Any]:
    """registry.normalize_options; on an error, again one option at a time to find its position."""
    given = {item.name: item.value for item in items}
    if len(given) == len(items):  # no name written twice
        try:
            return registry.check_options(statement, given, family)
        except ThanoSQLError:
            pass
    out: dict[str, Any] = {}
    for item in items:
        try:
            norm = registry.check_options(statement, {item.name: item.value}, family)
        except ThanoSQLError as exc:
            exc.position = item.position
            raise
        ((name, value),) = norm.items()
        if name in out:
            raise InvalidOption(f'option "{name}" is given more than once', position=item.position)
        out[name] = value
    return out


def _nonempty(normalized: dict[str, Any], items: list[ast.OptionItem], name: str, where: int) -> None:
    if normalized.get(name) == "":
        position = next((i.position for i in items if i.name.lower() == name), where)
        raise InvalidOption(f'option "{name}" cannot be an empty string', position=position)


def _no_params(first_param: int | None, what: str) -> None:
    if first_param is not None:
        raise FeatureNotAvailable(
            f"parameters ($1, ...) are not supported in the query of {what}",
            hint="The query runs later inside the server, where the parameters are gone; "
            "write the values into the query.",
            position=first_param,
        )


def _params_only_in(items: list[ast.OptionItem], allowed: tuple[str, ...]) -> None:
    """A ``$n`` option value is bound by the client at run time: only options whose value
    the rewrite can pass as SQL (``allowed``) take one; the others shape the statement."""
    for item in items:
        if isinstance(item.value, ast.Param) and item.name.lower() not in allowed:
            raise FeatureNotAvailable(
                f'option "{item.name}" cannot be a parameter (${item.value.number})',
                hint="Only search_input of SEARCH IMAGE takes a parameter; write the other values"
                " into the statement.",
                position=item.value.position,
            )


_NOT_ONE_TABLE = (
    "withClause",
    "valuesLists",
    "groupClause",
    "havingClause",
    "distinctClause",
    "windowClause",
    "limitCount",
    "limitOffset",
    "lockingClause",
    "intoClause",
)


def _source_table(select: _Select, names_at: Any) -> str | None:
    """``t`` when the query is ``SELECT ... FROM t [WHERE ...]`` on one table, else None.
    ``names_at(location)``: the dotted name written there (the tree holds the shadow's)."""
    tree = select.tree()
    if tree.get("op", "SETOP_NONE") != "SETOP_NONE" or any(tree.get(k) for k in _NOT_ONE_TABLE):
        return None
    from_clause = tree.get("fromClause") or []
    if len(from_clause) != 1 or not isinstance(from_clause[0], dict) or "RangeVar" not in from_clause[0]:
        return None
    rv = from_clause[0]["RangeVar"]
    parts = names_at(select.start + rv.get("location", 0))
    if len(parts) != sum(1 for k in ("catalogname", "schemaname", "relname") if rv.get(k)):
        return None
    return ".".join(quote_ident_if_needed(p) for p in parts)


class _Select:
    """The query after AS as PostgreSQL's grammar read it (the shadow's tree, as
    parse_sql_json's text; decoded only when needed, only near the root)."""

    def __init__(self, tree_json: str, start: int) -> None:
        self.json = tree_json
        self.start = start  # where the query starts in the user's text

    def tree(self) -> dict[str, Any]:
        node: dict[str, Any] = load_shallow(self.json)["stmts"][0]["stmt"]["SelectStmt"]
        return node
