"""The ``%%thanosql`` cell magic for IPython and Jupyter.

    %load_ext thanosql_pg
    %thanosql postgresql://user@host:5432/db     # optional: else $THANOSQL_DSN, else the
                                                 # embedded cluster (`thanosql start`)
    %%thanosql
    BUILD MODEL digits USING ConvNeXt_Tiny OPTIONS (...) AS SELECT * FROM digits_train;
    EVALUATE USING digits OPTIONS (...) AS SELECT * FROM digits_test

A cell holds one or more statements, ThanoSQL and plain SQL; the last one's
rows come back as a pandas DataFrame (pgvector columns as numpy arrays).
Statements are rewritten here with the proxy's preprocessor and sent straight
to the server, one at a time, so that each error can be placed in the cell's
own text. Progress NOTICEs of long statements drive a progress bar.
"""

from __future__ import annotations

import re
import sys
import time
from typing import Any

import psycopg
from IPython.core.magic import Magics, line_cell_magic, magics_class

from thanosql_pg import progress_text, shapes
from thanosql_pg.client import standard_conforming_strings
from thanosql_pg.errors import ThanoSQLError

# A connection string rather than a statement: a URI, or libpq's key=value form.
_DSN = re.compile(r"^(postgres(ql)?://|\w+\s*=\s*\S)", re.IGNORECASE)


def split_with_offsets(text: str, *, standard_conforming_strings: bool = True) -> list[tuple[int, str]]:
    """The statements of ``text`` with the 0-based offset of each, split by the
    preprocessor's own splitter (PostgreSQL's lexer: ``;`` in strings, comments
    and dollar quotes does not split)."""
    from thanosql_pg.preprocessor import split_statements
    from thanosql_pg.preprocessor.lexer import tokenize

    scs = standard_conforming_strings
    starts = {t.start for t in tokenize(text, standard_conforming_strings=scs)}
    out: list[tuple[int, str]] = []
    pos = 0
    for stmt in split_statements(text, standard_conforming_strings=scs):
        at = text.find(stmt, pos)
        # The same text inside a comment is not a token start: look further.
        while at >= 0 and at not in starts:
            at = text.find(stmt, at + 1)
        at = at if at >= 0 else pos  # cannot happen: the pieces are slices of text
        out.append((at, stmt))
        pos = at + len(stmt)
    return out


# --- errors ---------------------------------------------------------------------------
class ThanoSQLCellError(Exception):
    """A failed statement, shown like psql shows it (the caret under the
    position in the cell's text) instead of a Python traceback."""

    def __init__(self, message: str, *, sqlstate: str | None, text: str, position: int | None = None,
                 detail: str | None = None, hint: str | None = None, statement: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.sqlstate = sqlstate
        self.position = position  # 1-based character offset into the cell's text
        self.detail = detail
        self.hint = hint
        self.text = text
        self.statement = statement

    def lines(self) -> list[str]:
        out = [f"ERROR:  {self.message}"]
        if self.position:
            out += caret_lines(self.text, self.position)
        elif self.statement and self.statement.strip() != self.text.strip():
            out.append(f"STATEMENT:  {_shorten(self.statement)}")
        if self.detail:
            out.append(f"DETAIL:  {self.detail}")
        if self.hint:
            out.append(f"HINT:  {self.hint}")
        if self.sqlstate:
            out.append(f"SQLSTATE: {self.sqlstate}")
        return out

    def _render_traceback_(self) -> list[str]:  # IPython shows this instead of a traceback
        return self.lines()


def caret_lines(text: str, position: int) -> list[str]:
    """psql's two lines: ``LINE n: <the line>`` and a caret under character ``position`` (1-based)."""
    index = min(max(position - 1, 0), len(text))
    line_no = text.count("\n", 0, index) + 1
    start = text.rfind("\n", 0, index) + 1
    end = text.find("\n", index)
    line = text[start : end if end >= 0 else len(text)].replace("\t", " ")  # tabs would shift the caret
    prefix = f"LINE {line_no}: "
    return [prefix + line, " " * (len(prefix) + index - start) + "^"]


def _shorten(statement: str, limit: int = 300) -> str:
    one_line = " ".join(statement.split())
    return one_line if len(one_line) <= limit else one_line[: limit - 3] + "..."


def _from_thanosql(e: ThanoSQLError, text: str, offset: int, stmt: str) -> ThanoSQLCellError:
    return ThanoSQLCellError(e.message, sqlstate=e.sqlstate, text=text, detail=e.detail, hint=e.hint,
                             position=offset + e.position if e.position else None, statement=stmt)


def _from_server(e: psycopg.Error, text: str, offset: int | None, stmt: str) -> ThanoSQLCellError:
    diag = e.diag
    position = None
    # The server counts in the text it was sent: that is the cell's text only
    # when the preprocessor left the statement alone (offset is given then).
    if offset is not None and diag.statement_position:
        position = offset + int(diag.statement_position)
    return ThanoSQLCellError(diag.message_primary or str(e).strip(), sqlstate=diag.sqlstate or e.sqlstate,
                             text=text, position=position, detail=diag.message_detail,
                             hint=diag.message_hint, statement=stmt)


# --- progress -------------------------------------------------------------------------
# What the magic asks of the server when it connects: progress notices every second, with
# their counters as data (progress_text), so the bar moves and never depends on wording.
SESSION_SETTINGS = (("thanosql.progress_interval", "1s"), ("thanosql.progress_fields", "on"))


def ask_for_progress(conn: psycopg.Connection[Any]) -> None:
    """SESSION_SETTINGS for this session. A server without one of them (an older release)
    keeps its default: the statements run the same, the bar only moves less."""
    for name, value in SESSION_SETTINGS:
        try:
            conn.execute("SELECT pg_catalog.set_config(%s, %s, false)", (name, value))
        except psycopg.Error:
            pass


def _bar_class() -> Any:
    # The widget bar needs ipywidgets inside a kernel; the text bar works anywhere.
    if "ipykernel" in sys.modules:
        try:
            import ipywidgets  # noqa: F401
            from tqdm.notebook import tqdm

            return tqdm
        except ImportError:
            pass
    from tqdm.std import tqdm

    return tqdm


class NoticeStream:
    """A notice handler for one statement: a notice with progress fields (its DETAIL, see
    progress_text) moves a bar; any other notice is printed as a line."""

    def __init__(self) -> None:
        self.bar: Any = None
        self.label = ""

    def __call__(self, diag: psycopg.errors.Diagnostic) -> None:
        message = diag.message_primary or ""
        info = progress_text.read(diag.message_detail)
        if info is None:
            self._write(f"{diag.severity or 'NOTICE'}:  {message}")
            return
        if info.phase == "done":
            if self.bar is not None and info.label == self.label:
                self.bar.set_postfix_str(info.summary(), refresh=False)  # the kept epoch's, no ETA
                self.close(finished=True)
            self._write(f"{diag.severity or 'NOTICE'}:  {message}")  # the summary, as a line
            return
        if self.bar is None or info.label != self.label or info.total != self.bar.total:
            self.close(finished=False)
            # initial: the first notice comes some steps in; counting them as done
            # "now" would make the first rate absurd.
            self.bar = _bar_class()(total=info.total, initial=info.done, desc=info.label, unit="step",
                                    mininterval=0, file=sys.stderr, leave=True)
            self.label = info.label
        self.bar.set_postfix_str(info.summary(), refresh=False)
        if info.done != self.bar.n:
            self.bar.update(info.done - self.bar.n)  # also redraws
        else:
            self.bar.refresh()

    def _write(self, line: str) -> None:
        if self.bar is not None:
            self.bar.write(line, file=sys.stdout)  # above the bar, without breaking it
        else:
            print(line, flush=True)

    def close(self, *, finished: bool) -> None:
        if self.bar is None:
            return
        if finished:  # the last notice came before the end of training
            self.bar.update(self.bar.total - self.bar.n)
        self.bar.close()
        self.bar = None


# --- running a cell ---------------------------------------------------------------------
class CommandStatus(str):
    """The result of a statement that returns no rows ("CREATE TABLE", "INSERT 0 3")."""

    def __repr__(self) -> str:
        return str(self)


def to_dataframe(cur: psycopg.Cursor[Any]) -> Any:
    import pandas as pd

    columns = [c.name for c in cur.description or ()]
    return pd.DataFrame(cur.fetchall(), columns=columns)


_SUBMITTED_COLUMNS = list(shapes.names(shapes.SUBMITTED))  # a statement with background=True
_FINAL = ("succeeded", "failed", "cancelled")
_JOB = ("SELECT j.status, j.epoch, j.epochs, p.step, p.steps, j.message FROM thanosql.jobs j"
        " LEFT JOIN thanosql.progress p ON p.pid = j.pid WHERE j.job_id = %s")


def follow_jobs(conn: psycopg.Connection, job_ids: list[int], *, poll: float = 0.5) -> Any:
    """A progress bar per background job (epochs, from thanosql.jobs and thanosql.progress)
    until it ends; then the jobs' rows. Interrupting the wait leaves the jobs running."""
    import pandas as pd

    try:
        for job_id in job_ids:
            bar: Any = None
            while True:
                row = conn.execute(_JOB, (job_id,)).fetchone()
                if row is None:
                    break
                status, epoch, epochs, step, steps, _ = row
                if bar is None and epochs:
                    bar = _bar_class()(total=epochs, desc=f"job {job_id}", unit="epoch", file=sys.stderr,
                                       bar_format="{l_bar}{bar}| {n:.1f}/{total} epochs [{elapsed}]"
                                                  " {postfix}")
                if bar is not None:
                    done = max(0.0, (epoch or 0) - 1 + (step or 0) / steps) if epoch and steps else 0.0
                    bar.n = float(epochs) if status == "succeeded" else done
                    bar.set_postfix_str(status, refresh=True)
                if status in _FINAL:
                    break
                time.sleep(poll)
            if bar is not None:
                bar.close()
    except KeyboardInterrupt:
        print("stopped waiting; the jobs go on (thanosql.jobs shows them, thanosql.cancel_job cancels one)",
              file=sys.stderr)
    cur = conn.execute("SELECT * FROM thanosql.jobs WHERE job_id = ANY(%s) ORDER BY job_id", (job_ids,))
    return pd.DataFrame(cur.fetchall(), columns=[c.name for c in cur.description or ()])


def run_text(conn: psycopg.Connection, text: str, *, wait: bool = True) -> Any:
    """Run every statement of ``text``; return the last one's result: a DataFrame,
    a CommandStatus, or None for an empty text. Raises ThanoSQLCellError. A background
    job that the last statement submitted is followed to its end unless ``wait`` is False."""
    from thanosql_pg.preprocessor import rewrite

    try:
        scs = standard_conforming_strings(conn)
        statements = split_with_offsets(text, standard_conforming_strings=scs)
    except ThanoSQLError as e:  # unterminated string or comment, ...
        raise _from_thanosql(e, text, 0, text) from None
    result: Any = None
    for offset, stmt in statements:
        try:
            sql = rewrite(stmt, standard_conforming_strings=scs)
        except ThanoSQLError as e:
            raise _from_thanosql(e, text, offset, stmt) from None
        notices = NoticeStream()
        conn.add_notice_handler(notices)
        try:
            # A plain cursor: the text is already rewritten.
            cur = psycopg.Cursor(conn)
            cur.execute(sql, prepare=False)
            notices.close(finished=True)
        except psycopg.Error as e:
            notices.close(finished=False)
            raise _from_server(e, text, offset if sql is stmt else None, stmt) from None
        finally:
            conn.remove_notice_handler(notices)
        result = to_dataframe(cur) if cur.description is not None else CommandStatus(cur.statusmessage or "")
    if wait and list(getattr(result, "columns", [])) == _SUBMITTED_COLUMNS and len(result):
        result = follow_jobs(conn, [int(j) for j in result["job_id"]])
    show_pictures(conn, result)
    return result


_TRAINED_COLUMNS = list(shapes.names(shapes.TRAINED))  # BUILD/FIT's result


def show_pictures(conn: psycopg.Connection, result: Any) -> list[bytes]:
    """Beside the DataFrame: the training curve of a finished BUILD/FIT, and the heatmap
    of a confusion-matrix EVALUATE, as inline PNG images. Returns the images shown."""
    columns = list(getattr(result, "columns", []))
    pictures: list[bytes] = []
    try:
        from thanosql_pg import plots

        if columns == _TRAINED_COLUMNS and len(result):
            for model in dict.fromkeys(result["model"]):
                cur = conn.execute("SELECT * FROM thanosql.training_info(%s)", (model,))
                rows = [dict(zip([c.name for c in cur.description or ()], r, strict=True)) for r in cur]
                if rows:
                    pictures.append(plots.training_curve(rows, title=str(model)))
        elif columns == list(plots.CONFUSION_COLUMNS) and len(result):
            pictures.append(plots.confusion_heatmap(result.to_dict("records")))
    except ImportError:  # matplotlib is optional for the magic: the DataFrame is the result
        return []
    if pictures:
        from IPython.display import Image, display

        for png in pictures:
            display(Image(data=png, format="png"))
    return pictures


@magics_class
class ThanoSQLMagics(Magics):
    def __init__(self, shell: Any) -> None:
        super().__init__(shell)
        self.dsn: str | None = None
        self.conn: psycopg.Connection[Any] | None = None

    def connection(self) -> psycopg.Connection[Any]:
        from thanosql_pg.client import connect, default_dsn

        if self.conn is None or self.conn.closed or self.conn.broken:
            try:
                self.conn = connect(self.dsn or default_dsn(), autocommit=True)
                ask_for_progress(self.conn)
            except ThanoSQLError as e:
                raise ThanoSQLCellError(e.message, sqlstate=e.sqlstate, text="", hint=e.hint) from None
            except psycopg.Error as e:
                raise ThanoSQLCellError(f"could not connect: {str(e).strip()}", sqlstate="08001",
                                        text="") from None
        return self.conn

    def use(self, dsn: str) -> str:
        self.close()
        self.dsn = dsn
        info = self.connection().info
        return f"connected to {info.dbname} on {info.host}:{info.port} as {info.user}"

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    @line_cell_magic
    def thanosql(self, line: str, cell: str | None = None) -> Any:
        """%thanosql [connection string | statement]; %%thanosql [--no-wait] [connection string] +
        statements. --no-wait: a background job's statement returns at once (its job row)."""
        line = line.strip()
        wait = True
        if cell is not None and line.split()[:1] == ["--no-wait"]:
            wait, line = False, line[len("--no-wait"):].strip()
        if cell is None:
            if not line:
                return self.use(self.dsn) if self.dsn else self.use_default()
            if _DSN.match(line):
                return self.use(line)
            return run_text(self.connection(), line)
        if line:
            if not _DSN.match(line):
                raise ThanoSQLCellError(f"unexpected argument {line!r} after %%thanosql", sqlstate="42601",
                                        text="", hint="Give a connection string there, or nothing.")
            if line != self.dsn:
                self.use(line)
        return run_text(self.connection(), cell, wait=wait)

    def use_default(self) -> str:
        from thanosql_pg.client import default_dsn

        try:
            dsn = default_dsn()
        except ThanoSQLError as e:
            raise ThanoSQLCellError(e.message, sqlstate=e.sqlstate, text="", hint=e.hint) from None
        return self.use(dsn)


def load_ipython_extension(ipython: Any) -> None:
    ipython.register_magics(ThanoSQLMagics)


def unload_ipython_extension(ipython: Any) -> None:
    magics = ipython.magics_manager.registry.pop("ThanoSQLMagics", None)
    if magics is not None:
        magics.close()
        for kind in ("line", "cell"):
            ipython.magics_manager.magics[kind].pop("thanosql", None)
