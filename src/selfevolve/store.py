"""The experience store: every phase of the loop (acquire, refine, update, evaluate) records what it saw here.

An :class:`ExperienceStore` is one SQLite file in WAL mode (stdlib ``sqlite3``, no ORM). Each write is one
``BEGIN IMMEDIATE`` transaction that waits up to :data:`BUSY_TIMEOUT_S` for other writers, so several
processes can share a file, and a process killed mid-write loses only its unfinished transaction. One store
object may be used from several threads: a lock serialises its single connection.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import math
import numbers
import os
import sqlite3
import tempfile
import threading
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

from selfevolve.errors import SelfEvolveError

if TYPE_CHECKING:
    import datasets
    from typing_extensions import Unpack

PHASES = ("acquire", "refine", "update", "evaluate")
RUN_STATUSES = ("running", "finished", "failed")
BUSY_TIMEOUT_S = 30.0

# _MIGRATIONS[v] takes a database from schema version v (``PRAGMA user_version``) to v + 1.
_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        f"""CREATE TABLE runs (
            id TEXT PRIMARY KEY, name TEXT NOT NULL, config TEXT NOT NULL,
            status TEXT NOT NULL CHECK (status IN {RUN_STATUSES}),
            created_at TEXT NOT NULL, finished_at TEXT, metadata TEXT NOT NULL)""",
        f"""CREATE TABLE experiences (
            id INTEGER PRIMARY KEY AUTOINCREMENT, run_id TEXT NOT NULL REFERENCES runs (id),
            task TEXT NOT NULL, prompt TEXT NOT NULL, response TEXT NOT NULL, feedback TEXT NOT NULL,
            score REAL, method TEXT, phase TEXT NOT NULL CHECK (phase IN {PHASES}), model_revision TEXT,
            created_at TEXT NOT NULL, metadata TEXT NOT NULL)""",
        "CREATE INDEX experiences_run_id ON experiences (run_id)",
        "CREATE INDEX experiences_method ON experiences (method)",
        "CREATE INDEX experiences_phase ON experiences (phase)",
    ),
)
SCHEMA_VERSION = len(_MIGRATIONS)

_ORDERS = {
    "id": "id",
    "-id": "id DESC",
    "score": "score, id",
    "-score": "score DESC, id",
    "created_at": "created_at, id",
    "-created_at": "created_at DESC, id DESC",
}


def read_jsonl(path: str | Path) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-blank line of a ``.jsonl`` or ``.jsonl.gz`` file; a missing or
    unreadable file, or a line that is not a JSON object, is a one-line error that names the file and line."""
    path = Path(path)
    if not path.is_file():
        raise SelfEvolveError(f"{path} not found; pass an existing .jsonl or .jsonl.gz file")
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except ValueError as err:
                    raise SelfEvolveError(
                        f"{path} line {number}: not valid JSON ({err}); fix or remove the line"
                    ) from None
                if not isinstance(record, dict):
                    raise SelfEvolveError(
                        f"{path} line {number}: not a JSON object but {type(record).__name__}; fix or remove the line"
                    )
                yield number, record
    except (OSError, EOFError, UnicodeDecodeError) as err:
        raise SelfEvolveError(f"cannot read {path} ({err}); check the path") from None


def check_unique_ids(ids: Iterable[str], path: str | Path, what: str) -> None:
    """A one-line error naming the ids that the records of ``path`` (``what``: "document", ...) repeat."""
    counts = Counter(ids)
    duplicates = sorted(i for i, n in counts.items() if n > 1)
    if duplicates:
        raise SelfEvolveError(f"{path}: duplicate {what} id(s) {duplicates}; ids must be unique")


def write_jsonl(path: str | Path, records: Iterable[dict]) -> Path:
    """Write ``records`` as JSON lines, atomically (a staging file renamed over ``path``): a crash mid-write
    leaves the old file whole, never half of the new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.tmp")
    with staging.open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    os.replace(staging, path)
    return path


@dataclass
class Run:
    """One run of the loop: its name and config, and whether it is still running."""

    id: str  # a uuid4 hex unless the caller chose one
    name: str
    config: dict[str, Any]
    status: str  # one of RUN_STATUSES
    created_at: str  # UTC ISO-8601
    finished_at: str | None
    metadata: dict[str, Any]


@dataclass
class Experience:
    """One recorded interaction: what the model was asked, what it answered, and how that was judged."""

    run_id: str  # the run (from ExperienceStore.start_run) it belongs to
    task: str  # the task or dataset the prompt came from
    prompt: str
    response: str
    phase: str  # one of PHASES
    feedback: Any = None  # any JSON-serialisable value: a critique, a verifier verdict, a reward breakdown
    score: float | None = None  # a finite number, or None when not scored
    method: str | None = None  # the algorithm that produced it, e.g. "self-refine"
    model_revision: str | None = None  # which weights answered: a checkpoint name or hash
    metadata: dict[str, Any] = field(default_factory=dict)  # free-form JSON object
    id: int | None = None  # set by the store; ignored when adding
    created_at: str | None = None  # UTC ISO-8601; the store fills it in when None


# The experience columns after ``id``, in the order _row() returns them.
_COLUMNS = [f.name for f in dataclasses.fields(Experience) if f.name != "id"]
_INSERT = f"INSERT INTO experiences ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})"


class Filters(TypedDict, total=False):
    """Filters shared by :meth:`ExperienceStore.query`, ``count``, ``export_jsonl`` and ``to_dataset``."""

    run_id: str
    method: str
    phase: str
    task: str
    min_score: float
    max_score: float
    model_revision: str
    since: datetime | str  # inclusive; a naive datetime is taken as UTC


_FILTER_SQL = {
    "run_id": "run_id = ?",
    "method": "method = ?",
    "phase": "phase = ?",
    "task": "task = ?",
    "model_revision": "model_revision = ?",
    "min_score": "score >= ?",
    "max_score": "score <= ?",
    "since": "created_at >= ?",
}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def _utc_iso(value: datetime | str, what: str) -> str:
    """Normalise a timestamp to UTC ISO-8601 with microseconds, so stored values sort as strings."""
    if isinstance(value, str):
        with suppress(ValueError):
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if not isinstance(value, datetime):
        raise SelfEvolveError(f"{what} {value!r} is not a timestamp; pass a datetime or '2026-01-31T12:00Z'")
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc).isoformat(timespec="microseconds")


def _json(value: Any, what: str) -> str:
    try:
        return json.dumps(value, allow_nan=False, ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        raise SelfEvolveError(
            f"{what} is not JSON-serialisable ({exc}); use dicts, lists, str, numbers"
        ) from None


def _object(value: dict[str, Any] | None, what: str) -> str:
    """JSON text of a dict (None counts as empty), for the config and metadata columns."""
    if not isinstance(value, (dict, type(None))):
        raise SelfEvolveError(f"{what} must be a dict, not {type(value).__name__}; pass a JSON object")
    return _json(value or {}, what)


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise SelfEvolveError(f"{what} must be a finite number, got {value!r}; pass a float (or None)")
    return float(value)


def _text(value: Any, what: str, *, optional: bool = False) -> str | None:
    if not isinstance(value, str) and not (optional and value is None):
        raise SelfEvolveError(f"{what} must be a string, got {type(value).__name__}; convert it with str()")
    return value


def _row(exp: Experience) -> tuple[Any, ...]:
    """Validate an experience and return its column values in :data:`_COLUMNS` order."""
    if not isinstance(exp, Experience):
        raise SelfEvolveError(f"expected an Experience, got {type(exp).__name__}; wrap it in Experience(...)")
    if exp.phase not in PHASES:
        raise SelfEvolveError(f"phase {exp.phase!r} is unknown; use one of {', '.join(PHASES)}")
    return (
        _text(exp.run_id, "run_id"),
        _text(exp.task, "task"),
        _text(exp.prompt, "prompt"),
        _text(exp.response, "response"),
        exp.phase,
        _json(exp.feedback, "feedback"),
        None if exp.score is None else _number(exp.score, "score"),
        _text(exp.method, "method", optional=True),
        _text(exp.model_revision, "model_revision", optional=True),
        _object(exp.metadata, "metadata"),
        _now() if exp.created_at is None else _utc_iso(exp.created_at, "created_at"),
    )


def _from_row(cls: type[Experience] | type[Run], row: sqlite3.Row) -> Any:
    """An Experience or Run from a ``SELECT *`` row, decoding its JSON columns."""
    values = dict(row)
    for name in ("feedback", "config", "metadata"):
        if name in values:
            values[name] = json.loads(values[name])
    return cls(**values)


def _where(filters: Filters) -> tuple[str, list[Any]]:
    """The WHERE clause (fixed SQL with ``?`` placeholders) and its parameters; None means "any"."""
    clauses, params = [], []
    for name, value in filters.items():
        if name not in _FILTER_SQL:
            raise SelfEvolveError(f"unknown filter {name!r}; use one of {', '.join(_FILTER_SQL)}")
        if value is None:
            continue
        if name == "phase" and value not in PHASES:
            raise SelfEvolveError(f"phase {value!r} is unknown; filter on one of {', '.join(PHASES)}")
        if name in ("min_score", "max_score"):
            value = _number(value, name)
        elif name == "since":
            value = _utc_iso(value, name)
        clauses.append(_FILTER_SQL[name])
        params.append(value)
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), params


def _select(limit: int | None, order: str, filters: Filters) -> tuple[str, list[Any]]:
    if order not in _ORDERS:
        raise SelfEvolveError(f"order {order!r} is unknown; use one of {', '.join(_ORDERS)}")
    where, params = _where(filters)
    sql = f"SELECT * FROM experiences{where} ORDER BY {_ORDERS[order]}"
    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise SelfEvolveError(f"limit must be a non-negative int, got {limit!r}")
        sql += " LIMIT ?"
        params.append(limit)
    return sql, params


class ExperienceStore:
    """A SQLite file of runs and experiences; safe to share between threads and processes."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.RLock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(
                self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
            )
        except (OSError, sqlite3.Error) as exc:
            raise SelfEvolveError(
                f"cannot open {self.path} ({exc}); point ExperienceStore elsewhere"
            ) from None
        try:
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
            self._migrate(conn)
        except BaseException as exc:
            conn.close()
            if isinstance(exc, sqlite3.DatabaseError):
                message = f"{self.path} is not an experience store ({exc}); point ExperienceStore elsewhere"
                raise SelfEvolveError(message) from None
            raise
        self._conn: sqlite3.Connection | None = conn

    def _migrate(self, conn: sqlite3.Connection) -> None:
        """Bring the schema up to :data:`SCHEMA_VERSION` in one transaction, which other openers wait for."""
        if conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION:
            return
        with self._transaction(conn):
            version = conn.execute("PRAGMA user_version").fetchone()[0]  # another process may have migrated
            if version > SCHEMA_VERSION:
                raise SelfEvolveError(
                    f"{self.path} has schema version {version} > {SCHEMA_VERSION}; upgrade selfevolve"
                )
            tables = conn.execute("SELECT count(*) FROM sqlite_master WHERE name NOT LIKE 'sqlite%'")
            if version == 0 and tables.fetchone()[0]:
                raise SelfEvolveError(f"{self.path} holds another program's tables; use another path")
            for statement in (s for step in _MIGRATIONS[version:] for s in step):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    @staticmethod
    @contextmanager
    def _transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE takes the write lock up front, so concurrent writers queue, not deadlock."""
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._lock, self._transaction(self._connection()) as conn:
            yield conn

    @contextmanager
    def _read(self, sql: str, params: Iterable[Any] = ()) -> Iterator[sqlite3.Cursor]:
        with self._lock:
            yield self._connection().execute(sql, list(params))

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise SelfEvolveError(f"the experience store {self.path} is closed; open a new ExperienceStore")
        return self._conn

    def close(self) -> None:
        """Close the connection; later calls raise :class:`SelfEvolveError`."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> ExperienceStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # Runs

    def start_run(
        self,
        name: str,
        config: dict[str, Any] | None = None,
        run_id: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> str:
        """Record a new run in status ``running``; return its id (a uuid4 hex unless ``run_id`` is given)."""
        run_id = uuid.uuid4().hex if run_id is None else _text(run_id, "run_id")
        if not run_id:
            raise SelfEvolveError("run_id is empty; pass a non-empty string or omit it")
        name, config_json, metadata_json = (
            _text(name, "name"),
            _object(config, "config"),
            _object(metadata, "metadata"),
        )
        with self._write() as conn:
            if conn.execute("SELECT 1 FROM runs WHERE id = ?", (run_id,)).fetchone():
                raise SelfEvolveError(f"run {run_id!r} already exists; pick another run_id or omit it")
            sql = (
                "INSERT INTO runs (id, name, config, status, created_at, metadata) VALUES (?, ?, ?, ?, ?, ?)"
            )
            conn.execute(sql, (run_id, name, config_json, "running", _now(), metadata_json))
        return run_id

    def finish_run(self, run_id: str, status: str = "finished") -> None:
        """Mark a run ``finished`` or ``failed`` and stamp ``finished_at``."""
        if status not in ("finished", "failed"):
            raise SelfEvolveError(f"run status {status!r} is not final; use 'finished' or 'failed'")
        with self._write() as conn:
            sql = "UPDATE runs SET status = ?, finished_at = ? WHERE id = ?"
            if conn.execute(sql, (status, _now(), run_id)).rowcount == 0:
                raise SelfEvolveError(f"run {run_id!r} does not exist; use an id from start_run() or runs()")

    def get_run(self, run_id: str) -> Run:
        """The run with this id; a :class:`SelfEvolveError` if there is none."""
        with self._read("SELECT * FROM runs WHERE id = ?", (run_id,)) as cursor:
            row = cursor.fetchone()
        if row is None:
            raise SelfEvolveError(f"run {run_id!r} does not exist; use an id from start_run() or runs()")
        return _from_row(Run, row)

    def runs(self) -> list[Run]:
        """All runs, oldest first."""
        with self._read("SELECT * FROM runs ORDER BY rowid") as cursor:
            return [_from_row(Run, row) for row in cursor]

    # Experiences

    def add(self, experience: Experience) -> int:
        """Store one experience in its own transaction and return its id."""
        return self.add_many([experience])[0]

    def add_many(self, experiences: Iterable[Experience]) -> list[int]:
        """Store a batch in one transaction, all or nothing; return the new ids in order."""
        rows = []
        for index, experience in enumerate(experiences):
            try:
                rows.append(_row(experience))
            except SelfEvolveError as exc:
                raise SelfEvolveError(f"experience #{index}: {exc}") from None
        with self._write() as conn:
            return self._insert(conn, rows)

    @staticmethod
    def _insert(conn: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> list[int]:
        known: set[str] = set()
        ids = []
        for index, row in enumerate(rows):
            if row[0] not in known:
                if not conn.execute("SELECT 1 FROM runs WHERE id = ?", (row[0],)).fetchone():
                    raise SelfEvolveError(
                        f"experience #{index}: run {row[0]!r} does not exist; start_run() it first"
                    )
                known.add(row[0])
            ids.append(conn.execute(_INSERT, row).lastrowid)
        return ids

    def query(
        self, *, limit: int | None = None, order: str = "id", **filters: Unpack[Filters]
    ) -> list[Experience]:
        """Experiences matching all filters, sorted by ``order`` (a key of ``_ORDERS``); at most ``limit``."""
        with self._read(*_select(limit, order, filters)) as cursor:
            return [_from_row(Experience, row) for row in cursor]

    def count(self, **filters: Unpack[Filters]) -> int:
        """How many experiences match the filters."""
        where, params = _where(filters)
        with self._read(f"SELECT count(*) FROM experiences{where}", params) as cursor:
            return cursor.fetchone()[0]

    def __len__(self) -> int:
        return self.count()

    # Import and export

    def export_jsonl(
        self, path: str | Path, *, limit: int | None = None, order: str = "id", **filters: Unpack[Filters]
    ) -> int:
        """Write the experiences :meth:`query` would return as JSON lines, atomically; return how many."""
        path = Path(path)
        sql, params = _select(limit, order, filters)
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        count = 0
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as out, self._read(sql, params) as cursor:
                for row in cursor:
                    out.write(
                        json.dumps(dataclasses.asdict(_from_row(Experience, row)), ensure_ascii=False) + "\n"
                    )
                    count += 1
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return count

    def import_jsonl(self, path: str | Path, run_id: str | None = None) -> int:
        """Add the experiences of a JSONL file (as :meth:`export_jsonl` writes it), all or nothing.

        With ``run_id`` every line goes to that run; without it each line keeps its own ``run_id``, and runs
        this store lacks are created (status ``finished``). Ids are reassigned. Returns the number added.
        """
        fields = dataclasses.fields(Experience)
        allowed = {f.name for f in fields}
        required = {f.name for f in fields if f.default is f.default_factory is dataclasses.MISSING}
        required -= {"run_id"} if run_id is not None else set()
        rows = []
        for number, record in read_jsonl(path):
            where = f"{path} line {number}"
            if not required <= record.keys() <= allowed:
                raise SelfEvolveError(
                    f"{where}: not an experience; it needs keys {sorted(required)}, allows {sorted(allowed)}"
                )
            record.pop("id", None)
            if run_id is not None:
                record["run_id"] = run_id
            try:
                rows.append(_row(Experience(**record)))
            except SelfEvolveError as exc:
                raise SelfEvolveError(f"{where}: {exc}") from None
        with self._write() as conn:
            if run_id is None:
                sql = (
                    "INSERT OR IGNORE INTO runs (id, name, config, status, created_at, finished_at, metadata)"
                    " VALUES (?, ?, '{}', 'finished', ?, ?, ?)"
                )
                now, source = _now(), json.dumps({"imported_from": str(path.resolve())})
                for missing in sorted({row[0] for row in rows}):
                    conn.execute(sql, (missing, f"imported from {path.name}", now, now, source))
            return len(self._insert(conn, rows))

    def to_dataset(
        self, *, limit: int | None = None, order: str = "id", **filters: Unpack[Filters]
    ) -> datasets.Dataset:
        """The experiences :meth:`query` would return as a ``datasets.Dataset``, one column per field.

        ``feedback`` and ``metadata`` become JSON strings, since their shape varies from row to row.
        """
        import datasets

        value = datasets.Value
        features = datasets.Features({"id": value("int64"), **{c: value("string") for c in _COLUMNS}})
        features["score"] = value("float64")
        columns: dict[str, list[Any]] = {name: [] for name in features}
        for exp in self.query(limit=limit, order=order, **filters):
            for name, item in dataclasses.asdict(exp).items():
                columns[name].append(_json(item, name) if name in ("feedback", "metadata") else item)
        return datasets.Dataset.from_dict(columns, features=features)
