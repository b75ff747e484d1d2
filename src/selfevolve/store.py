"""The experience store: every phase of the loop (acquire, refine, update, evaluate) records what it saw here.

An :class:`ExperienceStore` is one SQLite file in WAL mode (stdlib ``sqlite3``, no ORM). Each write is one
``BEGIN IMMEDIATE`` transaction that waits up to :data:`BUSY_TIMEOUT_S` for other writers, so several
processes can share a file, and a process killed mid-write loses only its unfinished transaction. One store
object may be used from several threads: a lock serialises its single connection.

Provenance for the loop: an experience records the iteration and step that made it and the experience it came
from (``parent_id``); refine decisions (kept or dropped, and why) and evaluation scores are rows of their own.
:meth:`ExperienceStore.record_step` writes a step's rows together with a "step done" marker in one
transaction, so a step re-run after a crash can never duplicate them.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import sqlite3
import threading
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

from selfevolve.errors import SelfEvolveError
from selfevolve.io import read_jsonl, write_jsonl

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
    (  # provenance for the loop: iteration, step and parent of an experience; decisions; scores; step markers
        "ALTER TABLE experiences ADD COLUMN iteration INTEGER",
        "ALTER TABLE experiences ADD COLUMN step TEXT",
        "ALTER TABLE experiences ADD COLUMN parent_id INTEGER REFERENCES experiences (id)",
        "CREATE INDEX experiences_iteration ON experiences (run_id, iteration)",
        "CREATE INDEX experiences_parent_id ON experiences (parent_id)",
        f"""CREATE TABLE steps (
            run_id TEXT NOT NULL REFERENCES runs (id), iteration INTEGER NOT NULL,
            phase TEXT NOT NULL CHECK (phase IN {PHASES}), step TEXT NOT NULL, model_revision TEXT,
            result TEXT NOT NULL, finished_at TEXT NOT NULL, PRIMARY KEY (run_id, iteration, phase, step))""",
        f"""CREATE TABLE decisions (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            experience_id INTEGER NOT NULL REFERENCES experiences (id), run_id TEXT NOT NULL,
            iteration INTEGER NOT NULL, phase TEXT NOT NULL CHECK (phase IN {PHASES}), step TEXT NOT NULL,
            kept INTEGER NOT NULL CHECK (kept IN (0, 1)), reason TEXT NOT NULL,
            UNIQUE (experience_id, iteration, phase, step),
            FOREIGN KEY (run_id, iteration, phase, step) REFERENCES steps (run_id, iteration, phase, step))""",
        "CREATE INDEX decisions_run ON decisions (run_id, iteration)",
        f"""CREATE TABLE scores (
            id INTEGER PRIMARY KEY AUTOINCREMENT, run_id TEXT NOT NULL, iteration INTEGER NOT NULL,
            phase TEXT NOT NULL CHECK (phase IN {PHASES}), step TEXT NOT NULL, metric TEXT NOT NULL,
            value REAL NOT NULL, model_revision TEXT,
            UNIQUE (run_id, iteration, phase, step, metric),
            FOREIGN KEY (run_id, iteration, phase, step) REFERENCES steps (run_id, iteration, phase, step))""",
        """CREATE TABLE iterations (
            run_id TEXT NOT NULL REFERENCES runs (id), iteration INTEGER NOT NULL,
            accepted INTEGER NOT NULL CHECK (accepted IN (0, 1)), reason TEXT NOT NULL,
            model_revision TEXT, best_iteration INTEGER NOT NULL, result TEXT NOT NULL,
            finished_at TEXT NOT NULL, PRIMARY KEY (run_id, iteration))""",
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
    iteration: int | None = None  # the loop iteration that produced it (None outside the loop)
    step: str | None = None  # the loop step that produced it, e.g. "synthesize_qa"
    parent_id: int | None = None  # the stored experience it came from (a QA pair's document, a fix's mutant)
    id: int | None = None  # set by the store; ignored when adding
    created_at: str | None = None  # UTC ISO-8601; the store fills it in when None


@dataclass(frozen=True)
class Decision:
    """A refine (or update) step's verdict on one experience: kept or dropped, and why."""

    experience_id: int
    kept: bool
    reason: (
        str  # a short category ("support below 0.6", "duplicate", "trained on"), so reasons can be counted
    )


@dataclass(frozen=True)
class Score:
    """One evaluation metric of one step, e.g. ("f1", 0.42), with the model revision it measured."""

    metric: str
    value: float
    model_revision: str | None = None


@dataclass
class StepRecord:
    """A finished loop step: where it ran, the revision of the model it ended with, its result summary."""

    run_id: str
    iteration: int
    phase: str
    step: str
    model_revision: str | None
    result: dict[str, Any]
    finished_at: str


@dataclass(frozen=True)
class DecisionRow:
    """A stored decision, with the run, iteration, phase and step that made it."""

    experience_id: int
    kept: bool
    reason: str
    run_id: str
    iteration: int
    phase: str
    step: str


@dataclass(frozen=True)
class ScoreRow:
    """A stored score, with the run, iteration, phase and step that measured it."""

    metric: str
    value: float
    model_revision: str | None
    run_id: str
    iteration: int
    phase: str
    step: str


@dataclass
class IterationRecord:
    """The end of one loop iteration: was its update accepted (and why), and which iteration is best so far."""

    run_id: str
    iteration: int
    accepted: bool
    reason: str
    model_revision: str | None
    best_iteration: int
    result: dict[str, Any]
    finished_at: str


# The experience columns after ``id``, in the order _row() returns them.
_COLUMNS = [f.name for f in dataclasses.fields(Experience) if f.name != "id"]
_PARENT = _COLUMNS.index("parent_id")
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
    iteration: int
    step: str


_FILTER_SQL = {
    "run_id": "run_id = ?",
    "method": "method = ?",
    "phase": "phase = ?",
    "task": "task = ?",
    "model_revision": "model_revision = ?",
    "min_score": "score >= ?",
    "max_score": "score <= ?",
    "since": "created_at >= ?",
    "iteration": "iteration = ?",
    "step": "step = ?",
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


def _count(value: Any, what: str) -> int | None:
    """A non-negative int, or None."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise SelfEvolveError(f"{what} must be a non-negative int or None, got {value!r}")
    return value


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
        _count(exp.iteration, "iteration"),
        _text(exp.step, "step", optional=True),
        _count(exp.parent_id, "parent_id"),
        _now() if exp.created_at is None else _utc_iso(exp.created_at, "created_at"),
    )


def _from_row(cls: type, row: sqlite3.Row) -> Any:
    """An Experience, Run or StepRecord from a ``SELECT *`` row, decoding its JSON columns."""
    values = dict(row)
    for name in ("feedback", "config", "metadata", "result"):
        if name in values:
            values[name] = json.loads(values[name])
    return cls(**values)


_STEP_KEY = "run_id = ? AND iteration = ? AND phase = ? AND step = ?"


def _decision(decision: Decision) -> tuple[int, int, str]:
    if not isinstance(decision, Decision):
        raise SelfEvolveError(f"expected a Decision, got {type(decision).__name__}; wrap it in Decision(...)")
    if not isinstance(decision.kept, bool):
        raise SelfEvolveError(f"Decision.kept must be True or False, got {decision.kept!r}")
    return (
        _count(decision.experience_id, "experience_id"),
        int(decision.kept),
        _text(decision.reason, "reason"),
    )


def _score(score: Score) -> tuple[str, float, str | None]:
    if not isinstance(score, Score):
        raise SelfEvolveError(f"expected a Score, got {type(score).__name__}; wrap it in Score(...)")
    return (
        _text(score.metric, "metric"),
        _number(score.value, f"score {score.metric}"),
        _text(score.model_revision, "model_revision", optional=True),
    )


def _loop_where(run_id: str, iteration: int | None, step: str | None) -> tuple[str, list[Any]]:
    clauses, params = ["run_id = ?"], [run_id]
    if iteration is not None:
        clauses.append("iteration = ?")
        params.append(_count(iteration, "iteration"))
    if step is not None:
        clauses.append("step = ?")
        params.append(step)
    return " WHERE " + " AND ".join(clauses), params


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
        elif name == "iteration":
            value = _count(value, name)
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
    def _insert(
        conn: sqlite3.Connection, rows: list[tuple[Any, ...]], old_ids: list[int | None] | None = None
    ) -> list[int]:
        """Insert rows; with ``old_ids`` (an import), parents are renumbered to the ids given in this call and
        parents outside it become None."""
        known: set[str] = set()
        renumbered: dict[int, int] = {}
        ids = []
        for index, row in enumerate(rows):
            if row[0] not in known:
                if not conn.execute("SELECT 1 FROM runs WHERE id = ?", (row[0],)).fetchone():
                    raise SelfEvolveError(
                        f"experience #{index}: run {row[0]!r} does not exist; start_run() it first"
                    )
                known.add(row[0])
            if old_ids is not None:
                row = (*row[:_PARENT], renumbered.get(row[_PARENT]), *row[_PARENT + 1 :])
            try:
                ids.append(conn.execute(_INSERT, row).lastrowid)
            except sqlite3.IntegrityError:
                raise SelfEvolveError(
                    f"experience #{index}: parent_id {row[_PARENT]} is not a stored experience; "
                    "pass the id add() returned for it"
                ) from None
            if old_ids is not None and old_ids[index] is not None:
                renumbered[old_ids[index]] = ids[-1]
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

    # Loop provenance: steps, decisions, scores, iterations

    def record_step(
        self,
        run_id: str,
        iteration: int,
        phase: str,
        step: str,
        *,
        experiences: Iterable[Experience] = (),
        decisions: Iterable[Decision] = (),
        scores: Iterable[Score] = (),
        result: dict[str, Any] | None = None,
        model_revision: str | None = None,
    ) -> list[int]:
        """Write a finished loop step: its experiences (tagged with run, iteration, phase and step), decisions,
        scores and a "done" marker, in one transaction; return the new experience ids.

        A step already recorded writes nothing and returns the ids it stored then, so a step re-run after a
        crash cannot duplicate rows."""
        key = (_text(run_id, "run_id"), _count(iteration, "iteration"), phase, _text(step, "step"))
        if phase not in PHASES:
            raise SelfEvolveError(f"phase {phase!r} is unknown; use one of {', '.join(PHASES)}")
        rows = []
        for index, experience in enumerate(experiences):
            try:
                tagged = dataclasses.replace(
                    experience, run_id=run_id, iteration=iteration, phase=phase, step=step
                )
                rows.append(_row(tagged))
            except (SelfEvolveError, TypeError) as exc:
                raise SelfEvolveError(f"experience #{index} of step {step}: {exc}") from None
        verdicts = [_decision(d) for d in decisions]
        values = [_score(s) for s in scores]
        result_json, revision = (
            _object(result, "result"),
            _text(model_revision, "model_revision", optional=True),
        )
        with self._write() as conn:
            if not conn.execute("SELECT 1 FROM runs WHERE id = ?", (run_id,)).fetchone():
                raise SelfEvolveError(f"run {run_id!r} does not exist; start_run() it first")
            if conn.execute(f"SELECT 1 FROM steps WHERE {_STEP_KEY}", key).fetchone():
                found = conn.execute(f"SELECT id FROM experiences WHERE {_STEP_KEY} ORDER BY id", key)
                return [row[0] for row in found]
            conn.execute(
                "INSERT INTO steps (run_id, iteration, phase, step, model_revision, result, finished_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (*key, revision, result_json, _now()),
            )
            ids = self._insert(conn, rows)
            try:
                conn.executemany(
                    "INSERT INTO decisions (experience_id, kept, reason, run_id, iteration, phase, step)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [(*verdict, *key) for verdict in verdicts],
                )
            except sqlite3.IntegrityError as exc:
                raise SelfEvolveError(
                    f"step {step}: a decision names an experience that is not stored or decides one twice "
                    f"({exc}); decide each stored experience once"
                ) from None
            try:
                conn.executemany(
                    "INSERT INTO scores (metric, value, model_revision, run_id, iteration, phase, step)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [(*value, *key) for value in values],
                )
            except sqlite3.IntegrityError:
                raise SelfEvolveError(
                    f"step {step}: a metric is scored twice; give each metric one value"
                ) from None
            return ids

    def step_record(self, run_id: str, iteration: int, phase: str, step: str) -> StepRecord | None:
        """The "done" marker of a loop step, or None when the step has not finished."""
        with self._read(f"SELECT * FROM steps WHERE {_STEP_KEY}", (run_id, iteration, phase, step)) as cursor:
            row = cursor.fetchone()
        return None if row is None else _from_row(StepRecord, row)

    def step_records(self, run_id: str) -> list[StepRecord]:
        """Every finished step of a run, in the order they finished."""
        with self._read("SELECT * FROM steps WHERE run_id = ? ORDER BY rowid", (run_id,)) as cursor:
            return [_from_row(StepRecord, row) for row in cursor]

    def decisions(
        self, run_id: str, *, iteration: int | None = None, step: str | None = None
    ) -> list[DecisionRow]:
        """Decisions of a run (optionally of one iteration or step), in the order they were made."""
        where, params = _loop_where(run_id, iteration, step)
        sql = f"SELECT experience_id, kept, reason, run_id, iteration, phase, step FROM decisions{where} ORDER BY id"
        with self._read(sql, params) as cursor:
            return [DecisionRow(**{**dict(row), "kept": bool(row["kept"])}) for row in cursor]

    def scores(self, run_id: str, *, iteration: int | None = None, step: str | None = None) -> list[ScoreRow]:
        """Scores of a run (optionally of one iteration or step), in the order they were measured."""
        where, params = _loop_where(run_id, iteration, step)
        sql = f"SELECT metric, value, model_revision, run_id, iteration, phase, step FROM scores{where} ORDER BY id"
        with self._read(sql, params) as cursor:
            return [ScoreRow(**dict(row)) for row in cursor]

    def record_iteration(
        self,
        run_id: str,
        iteration: int,
        *,
        accepted: bool,
        reason: str,
        best_iteration: int,
        model_revision: str | None = None,
        result: dict[str, Any] | None = None,
    ) -> bool:
        """Record the end of a loop iteration (accepted or rolled back, and why); False if already recorded."""
        values = (
            _text(run_id, "run_id"),
            _count(iteration, "iteration"),
            int(bool(accepted)),
            _text(reason, "reason"),
            _text(model_revision, "model_revision", optional=True),
            _count(best_iteration, "best_iteration"),
            _object(result, "result"),
            _now(),
        )
        with self._write() as conn:
            sql = (
                "INSERT OR IGNORE INTO iterations (run_id, iteration, accepted, reason, model_revision,"
                " best_iteration, result, finished_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
            )
            return conn.execute(sql, values).rowcount == 1

    def iterations(self, run_id: str) -> list[IterationRecord]:
        """The recorded ends of a run's iterations, in order."""
        with self._read("SELECT * FROM iterations WHERE run_id = ? ORDER BY iteration", (run_id,)) as cursor:
            return [
                IterationRecord(
                    **{**dict(row), "accepted": bool(row["accepted"]), "result": json.loads(row["result"])}
                )
                for row in cursor
            ]

    # Import and export

    def export_jsonl(
        self, path: str | Path, *, limit: int | None = None, order: str = "id", **filters: Unpack[Filters]
    ) -> int:
        """Write the experiences :meth:`query` would return as JSON lines, atomically; return how many."""
        sql, params = _select(limit, order, filters)
        with self._read(sql, params) as cursor:
            rows = cursor.fetchall()
        write_jsonl(path, (dataclasses.asdict(_from_row(Experience, row)) for row in rows))
        return len(rows)

    def import_jsonl(self, path: str | Path, run_id: str | None = None) -> int:
        """Add the experiences of a JSONL file (as :meth:`export_jsonl` writes it), all or nothing.

        With ``run_id`` every line goes to that run; without it each line keeps its own ``run_id``, and runs
        this store lacks are created (status ``finished``). Ids are reassigned; a ``parent_id`` pointing to
        an earlier line follows it, one pointing outside the file becomes None. Returns the number added.
        """
        fields = dataclasses.fields(Experience)
        allowed = {f.name for f in fields}
        required = {f.name for f in fields if f.default is f.default_factory is dataclasses.MISSING}
        required -= {"run_id"} if run_id is not None else set()
        rows, old_ids = [], []
        for number, record in read_jsonl(path):
            where = f"{path} line {number}"
            if not required <= record.keys() <= allowed:
                raise SelfEvolveError(
                    f"{where}: not an experience; it needs keys {sorted(required)}, allows {sorted(allowed)}"
                )
            old_ids.append(record.pop("id", None))
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
            return len(self._insert(conn, rows, old_ids))

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
        features["iteration"] = features["parent_id"] = value("int64")
        columns: dict[str, list[Any]] = {name: [] for name in features}
        for exp in self.query(limit=limit, order=order, **filters):
            for name, item in dataclasses.asdict(exp).items():
                columns[name].append(_json(item, name) if name in ("feedback", "metadata") else item)
        return datasets.Dataset.from_dict(columns, features=features)
