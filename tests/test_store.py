"""The experience store against a real SQLite file: round trips, filters, atomicity, concurrency, crashes."""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from selfevolve.errors import SelfEvolveError
from selfevolve.store import (
    _MIGRATIONS,
    SCHEMA_VERSION,
    Decision,
    DecisionRow,
    Experience,
    ExperienceStore,
    Score,
    ScoreRow,
)

INJECTION = "x'; DROP TABLE experiences; --"


@pytest.fixture
def store(tmp_path: Path):
    with ExperienceStore(tmp_path / "store.db") as opened:
        yield opened


def make(run_id: str, i: int = 0, **fields) -> Experience:
    values = dict(run_id=run_id, task="gsm8k", prompt=f"prompt {i}", response=f"answer {i}", phase="acquire")
    return Experience(**{**values, **fields})


def content(exp: Experience) -> dict:
    """An experience's fields minus the ones the store assigns."""
    return {k: v for k, v in dataclasses.asdict(exp).items() if k not in ("id", "run_id")}


def test_runs_round_trip(store: ExperienceStore) -> None:
    first = store.start_run("baseline", {"lr": 1e-4, "steps": [1, 2]}, metadata={"host": "ci"})
    second = store.start_run("custom", run_id="my-run")
    assert len(first) == 32 and second == "my-run"

    run = store.get_run(first)
    assert (run.name, run.config, run.metadata, run.status, run.finished_at) == (
        "baseline",
        {"lr": 1e-4, "steps": [1, 2]},
        {"host": "ci"},
        "running",
        None,
    )
    assert datetime.fromisoformat(run.created_at).tzinfo is not None

    store.finish_run(first)
    store.finish_run(second, status="failed")
    assert [(r.id, r.status) for r in store.runs()] == [(first, "finished"), (second, "failed")]
    assert store.get_run(first).finished_at >= run.created_at
    assert store.get_run(second).config == {}

    with pytest.raises(SelfEvolveError, match="already exists"):
        store.start_run("again", run_id="my-run")
    with pytest.raises(SelfEvolveError, match="does not exist"):
        store.get_run("nope")
    with pytest.raises(SelfEvolveError, match="does not exist"):
        store.finish_run("nope")
    with pytest.raises(SelfEvolveError, match="not final"):
        store.finish_run(first, status="paused")
    with pytest.raises(SelfEvolveError, match="config must be a dict"):
        store.start_run("bad", config=[1, 2])  # type: ignore[arg-type]


def test_experience_round_trip(store: ExperienceStore) -> None:
    run = store.start_run("r")
    exp = make(
        run,
        feedback={"verdict": "wrong", "steps": [1, None, "ü"]},
        score=0.25,
        method="self-refine",
        phase="refine",
        model_revision="ckpt-3",
        metadata={"attempt": 2},
    )
    new_id = store.add(exp)
    assert exp.id is None  # the caller's object is not modified
    (stored,) = store.query()
    assert stored.id == new_id and stored.run_id == run
    assert content(stored) == {**content(exp), "created_at": stored.created_at}
    assert datetime.fromisoformat(stored.created_at).utcoffset() == timedelta(0)
    assert store.add(make(run, score=3)) == new_id + 1  # ints are scores too
    assert store.query()[1].score == 3.0 and store.query()[1].feedback is None


def test_filters_order_limit_count(store: ExperienceStore) -> None:
    runs = [store.start_run("a"), store.start_run("b")]
    phases = ["acquire", "refine", "update", "evaluate"]
    expected = []
    for i in range(24):
        exp = make(
            runs[i % 2],
            i,
            task=f"task{i % 3}",
            method=["star", "self-refine", None][i % 3],
            phase=phases[i % 4],
            score=None if i % 5 == 0 else (i * 7 % 11) / 10,
            model_revision=f"rev{i // 12}",
        )
        expected.append(exp)
    ids = store.add_many(expected)
    assert ids == list(range(1, 25)) and len(store) == 24

    def check(predicate, **filters) -> None:
        want = [i + 1 for i, e in enumerate(expected) if predicate(e)]
        assert [e.id for e in store.query(**filters)] == want
        assert store.count(**filters) == len(want)

    check(lambda e: e.run_id == runs[1], run_id=runs[1])
    check(lambda e: e.method == "star", method="star")
    check(lambda e: e.phase == "update", phase="update")
    check(lambda e: e.task == "task2", task="task2")
    check(lambda e: e.model_revision == "rev1", model_revision="rev1")
    check(lambda e: e.score is not None and e.score >= 0.5, min_score=0.5)
    check(lambda e: e.score is not None and e.score <= 0.3, max_score=0.3)
    check(
        lambda e: e.score is not None and 0.2 <= e.score <= 0.6 and e.run_id == runs[0],
        min_score=0.2,
        max_score=0.6,
        run_id=runs[0],
    )
    check(lambda e: True, method=None, phase=None)  # None means "any"
    check(lambda e: False, task="missing")

    scored = [e for e in store.query() if e.score is not None]
    assert [e.score for e in store.query(order="-score")][: len(scored)] == sorted(
        (e.score for e in scored), reverse=True
    )
    assert store.query(order="score")[0].score is None  # NULL sorts first ascending
    assert [e.id for e in store.query(order="-id", limit=3)] == [24, 23, 22]
    assert [e.id for e in store.query(order="created_at", limit=2)] == [1, 2]
    assert [e.id for e in store.query(order="-created_at", phase="acquire", limit=2)] == [21, 17]
    assert store.query(limit=0) == []

    cutoff = datetime.now(timezone.utc)
    late = store.add(make(runs[0], 99))
    assert [e.id for e in store.query(since=cutoff)] == [late]
    assert store.count(since=cutoff.isoformat()) == 1
    assert store.count(since=cutoff.replace(tzinfo=None)) == 1  # naive means UTC
    assert store.count(since="2000-01-01T00:00:00Z") == 25

    for bad, match in [
        (dict(order="random()"), "order"),
        (dict(limit=-1), "limit"),
        (dict(phase="train"), "phase"),
        (dict(min_score="high"), "min_score"),
        (dict(since="yesterday"), "since"),
        (dict(colour="red"), "unknown filter"),
    ]:
        with pytest.raises(SelfEvolveError, match=match):
            store.query(**bad)


def test_schema_and_connection_settings(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "store.db"  # missing parents are created
    with ExperienceStore(path) as opened:
        opened.add(make(opened.start_run("r")))
    with ExperienceStore(path) as reopened:  # reopening an existing store keeps the data
        assert len(reopened) == 1
    raw = sqlite3.connect(path)
    assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    indexes = {row[0] for row in raw.execute("SELECT sql FROM sqlite_master WHERE type = 'index'") if row[0]}
    assert {i.split("(")[1].strip(") ") for i in indexes} == {
        "run_id",
        "method",
        "phase",
        "run_id, iteration",
        "parent_id",
    }
    raw.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    raw.commit()
    raw.close()
    with pytest.raises(SelfEvolveError, match="upgrade selfevolve"):
        ExperienceStore(path)


def test_export_import_round_trip(store: ExperienceStore, tmp_path: Path) -> None:
    run = store.start_run("r")
    other = store.start_run("other")
    originals = [make(run, i, score=i / 10, feedback=[i, {"k": "v"}], metadata={"i": i}) for i in range(10)]
    store.add_many([*originals, make(other, 100)])

    out = tmp_path / "exports" / "run.jsonl"
    out.parent.mkdir()
    out.write_text("stale content\n")
    assert store.export_jsonl(out, run_id=run) == 10
    lines = out.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 10 and json.loads(lines[3])["metadata"] == {"i": 3}
    assert sorted(p.name for p in out.parent.iterdir()) == ["run.jsonl"]  # no temp file left behind
    assert store.export_jsonl(tmp_path / "top.jsonl", order="-score", limit=2) == 2
    assert json.loads((tmp_path / "top.jsonl").read_text().splitlines()[0])["score"] == 0.9

    with ExperienceStore(tmp_path / "copy.db") as copy:
        assert copy.import_jsonl(out) == 10  # the run is created from the lines' run_id
        assert [content(e) for e in copy.query()] == [content(e) for e in store.query(run_id=run)]
        assert [r.id for r in copy.runs()] == [run] and copy.get_run(run).status == "finished"
        target = copy.start_run("target")
        assert copy.import_jsonl(out, run_id=target) == 10
        assert copy.count(run_id=target) == 10 and copy.count() == 20
        with pytest.raises(SelfEvolveError, match="does not exist"):
            copy.import_jsonl(out, run_id="unknown-run")
        assert copy.count() == 20


def test_to_dataset(store: ExperienceStore) -> None:
    run = store.start_run("r")
    store.add_many([make(run, i, score=i, feedback={"n": i} if i else "text") for i in range(5)])
    dataset = store.to_dataset(min_score=1)
    assert len(dataset) == 4
    assert set(dataset.column_names) == {f.name for f in dataclasses.fields(Experience)}
    assert dataset[0]["prompt"] == "prompt 1" and json.loads(dataset[0]["feedback"]) == {"n": 1}
    assert dataset.features["score"].dtype == "float64"
    assert len(store.to_dataset(limit=2)) == 2
    empty = store.to_dataset(task="none")
    assert len(empty) == 0 and empty.column_names == dataset.column_names


def test_add_many_is_all_or_nothing(store: ExperienceStore) -> None:
    run = store.start_run("r")
    store.add(make(run))
    with pytest.raises(SelfEvolveError, match=r"experience #3: phase 'train'"):
        store.add_many([make(run, i) for i in range(3)] + [make(run, phase="train")])
    # Validation passes here, so the first rows are inserted before the unknown run fails the transaction.
    with pytest.raises(SelfEvolveError, match="experience #50: run 'ghost' does not exist"):
        store.add_many([make(run, i) for i in range(50)] + [make("ghost")])

    def failing():
        yield make(run, 1)
        raise RuntimeError("generator broke")

    with pytest.raises(RuntimeError):
        store.add_many(failing())
    assert len(store) == 1
    assert store.add_many([]) == []


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        (dict(phase="training"), "phase 'training' is unknown"),
        (dict(score=float("nan")), "finite number"),
        (dict(score=float("inf")), "finite number"),
        (dict(score="0.5"), "finite number"),
        (dict(score=True), "finite number"),
        (dict(feedback={"f": object()}), "feedback is not JSON-serialisable"),
        (dict(feedback=[float("nan")]), "feedback is not JSON-serialisable"),
        (dict(metadata={"s": {1, 2}}), "metadata is not JSON-serialisable"),
        (dict(metadata=["not", "a", "dict"]), "metadata must be a dict"),
        (dict(prompt=b"bytes"), "prompt must be a string"),
        (dict(created_at="last week"), "created_at"),
        (dict(run_id="no-such-run"), "run 'no-such-run' does not exist"),
    ],
)
def test_bad_experiences_are_refused(store: ExperienceStore, fields: dict, match: str) -> None:
    run = store.start_run("r")
    with pytest.raises(SelfEvolveError, match=match) as caught:
        store.add(make(**{"run_id": run, **fields}))
    assert "\n" not in str(caught.value) and ";" in str(caught.value)  # one line: what was wrong; what to do
    assert len(store) == 0


def test_injection_strings_are_plain_data(store: ExperienceStore) -> None:
    run = store.start_run(INJECTION, {INJECTION: INJECTION}, run_id=INJECTION)
    store.add(
        make(run, task=INJECTION, method="' OR '1'='1", prompt='"; DELETE FROM runs; --', response="%s ?")
    )
    store.add(make(run, task="plain", method="plain"))
    assert store.get_run(INJECTION).config == {INJECTION: INJECTION}
    (hit,) = store.query(task=INJECTION, run_id=INJECTION)
    assert (hit.method, hit.prompt, hit.response) == ("' OR '1'='1", '"; DELETE FROM runs; --', "%s ?")
    assert store.count(method="' OR '1'='1") == 1 and store.count(method="x' OR 1=1 --") == 0
    assert store.count(task="%") == 0 and store.count(model_revision="' OR ''='") == 0
    assert len(store) == 2 and len(store.runs()) == 1


def test_unusable_files_give_clear_errors(tmp_path: Path) -> None:
    junk = tmp_path / "notes.db"
    junk.write_bytes(b"these are my notes, not a database\n" * 200)
    with pytest.raises(SelfEvolveError, match=r"notes\.db.*elsewhere"):
        ExperienceStore(junk)
    assert junk.read_bytes().startswith(b"these are my notes")  # left untouched

    foreign = tmp_path / "foreign.db"
    conn = sqlite3.connect(foreign)
    conn.execute("CREATE TABLE accounts (id INTEGER)")
    conn.close()
    with pytest.raises(SelfEvolveError, match="another program"):
        ExperienceStore(foreign)

    with pytest.raises(SelfEvolveError, match="elsewhere"):
        ExperienceStore(tmp_path)  # a directory

    closed = ExperienceStore(tmp_path / "closed.db")
    closed.close()
    with pytest.raises(SelfEvolveError, match="closed"):
        closed.runs()


def test_malformed_jsonl_names_the_line(store: ExperienceStore, tmp_path: Path) -> None:
    run = store.start_run("r")
    good = json.dumps(dataclasses.asdict(make(run)))
    cases = {
        "{not json": "line 3: not valid JSON",
        "[1, 2]": "line 3: not a JSON object",
        json.dumps({"task": "t"}): "line 3: not an experience",
        json.dumps({**json.loads(good), "extra": 1}): "line 3: not an experience",
        json.dumps({**json.loads(good), "phase": "nap"}): "line 3: phase 'nap'",
        json.dumps({**json.loads(good), "score": "NaN"}): "line 3: score",
    }
    for bad, match in cases.items():
        path = tmp_path / "bad.jsonl"
        path.write_text(f"{good}\n\n{bad}\n{good}\n", encoding="utf-8")
        with pytest.raises(SelfEvolveError, match=match):
            store.import_jsonl(path)
    assert len(store) == 0  # nothing from a bad file is kept
    with pytest.raises(SelfEvolveError, match="not found"):
        store.import_jsonl(tmp_path / "missing.jsonl")
    (tmp_path / "binary.jsonl").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(SelfEvolveError, match="cannot read"):
        store.import_jsonl(tmp_path / "binary.jsonl")


def test_threads_share_one_store(store: ExperienceStore) -> None:
    run = store.start_run("r")

    def work(t: int) -> None:
        for i in range(50):
            store.add(make(run, i, metadata={"t": t}))
            store.count(run_id=run)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(store) == 200


def _write_concurrently(path: str, proc: int, count: int, barrier) -> None:
    """Child process: open the (maybe not yet created) store, then add ``count`` experiences."""
    with ExperienceStore(path) as store:
        run = f"proc-{proc}"
        store.start_run(run, run_id=run)
        barrier.wait(timeout=60)
        singles = count * 2 // 3
        for i in range(singles):
            store.add(make(run, i, metadata={"proc": proc, "i": i}))
        for start in range(singles, count, 25):
            batch = range(start, min(start + 25, count))
            store.add_many([make(run, i, metadata={"proc": proc, "i": i}) for i in batch])


@pytest.mark.timeout(120)
def test_processes_writing_at_once_lose_nothing(tmp_path: Path) -> None:
    path, procs, count = str(tmp_path / "shared.db"), 3, 300
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(procs)
    workers = [
        context.Process(target=_write_concurrently, args=(path, p, count, barrier)) for p in range(procs)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=100)
        assert worker.exitcode == 0
    with ExperienceStore(path) as store:
        assert len(store) == procs * count
        pairs = [(e.metadata["proc"], e.metadata["i"]) for e in store.query()]
        assert sorted(pairs) == [(p, i) for p in range(procs) for i in range(count)]
        assert all(store.count(run_id=f"proc-{p}") == count for p in range(procs))


WRITER = """
import sys
from selfevolve.store import Experience, ExperienceStore

store = ExperienceStore(sys.argv[1])
run, batch, round_ = sys.argv[2], int(sys.argv[3]), sys.argv[4]
for k in range(10**9):
    store.add(Experience(run, "t", "single", "r", "acquire"))
    tag = f"{round_}-{k}"
    store.add_many(Experience(run, "t", f"p{i}", "r" * 300, "update", metadata={"batch": tag}) for i in range(batch))
"""


def _in_write_transaction(probe: sqlite3.Connection) -> bool:
    """Whether another connection holds the write lock right now (our BEGIN IMMEDIATE fails at once)."""
    try:
        probe.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError:
        return True
    probe.execute("ROLLBACK")
    return False


@pytest.mark.timeout(120)
@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_killed_writer_leaves_database_intact(tmp_path: Path) -> None:
    path, batch = tmp_path / "crash.db", 1000
    probe = sqlite3.connect(path, timeout=0, isolation_level=None)
    with ExperienceStore(path) as store:
        run = store.start_run("crash")
        for round_ in range(3):  # kill after 0, 1 and 2 batches, each time inside a write transaction
            args = [sys.executable, "-c", textwrap.dedent(WRITER), str(path), run, str(batch), str(round_)]
            before = store.count(run_id=run)
            writer = subprocess.Popen(args)
            try:
                deadline = time.monotonic() + 60
                while store.count(run_id=run) <= before + batch * round_ or not _in_write_transaction(probe):
                    assert writer.poll() is None and time.monotonic() < deadline
                    time.sleep(0.001)
            finally:
                writer.kill()
                writer.wait()
            assert writer.returncode == -signal.SIGKILL  # it was still writing when killed
    probe.close()

    raw = sqlite3.connect(path)
    assert raw.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    sizes = raw.execute(
        "SELECT json_extract(metadata, '$.batch'), count(*) FROM experiences WHERE phase = 'update' GROUP BY 1"
    ).fetchall()
    raw.close()
    assert sizes and all(size == batch for _, size in sizes)  # every batch is complete or absent

    with ExperienceStore(path) as reopened:
        before = len(reopened)
        reopened.add(make(run, 1))
        reopened.add_many([make(run, i) for i in range(5)])
        assert len(reopened) == before + 6


# Loop provenance: steps, decisions, scores, iterations.

PROVENANCE = """
SELECT e.id, e.step, e.response, t.step AS trained_by, d.step AS dropped_by, d.reason
FROM experiences e
LEFT JOIN decisions t ON t.experience_id = e.id AND t.phase = 'update' AND t.kept
LEFT JOIN decisions d ON d.experience_id = e.id AND NOT d.kept
WHERE e.run_id = :run AND e.iteration = :iteration AND e.phase = 'acquire' AND e.parent_id IS NOT NULL
ORDER BY e.id
"""


def _iteration(store: ExperienceStore, run: str, iteration: int) -> list[int]:
    """One loop iteration: a document, four QA pairs from it, a filter, an update on the kept ones, a score."""
    (doc,) = store.record_step(
        run, iteration, "acquire", "documents", experiences=[make(run, task="document", response="Ada ...")]
    )
    qa = store.record_step(
        run,
        iteration,
        "acquire",
        "synthesize_qa",
        experiences=[make(run, i, task="qa", parent_id=doc) for i in range(4)],
    )
    store.record_step(
        run,
        iteration,
        "refine",
        "grounding_filter",
        decisions=[
            Decision(qa[0], True, "supported"),
            Decision(qa[1], False, "support below 0.6"),
            Decision(qa[2], False, "duplicate"),
            Decision(qa[3], True, "supported"),
        ],
    )
    store.record_step(
        run,
        iteration,
        "update",
        "selfparam",
        decisions=[Decision(qa[0], True, "trained on"), Decision(qa[3], True, "trained on")],
        result={"losses": [2.0, 1.5]},
        model_revision=f"m+i{iteration}",
    )
    store.record_step(
        run, iteration, "evaluate", "heldout_qa", scores=[Score("f1", 0.25 * iteration, f"m+i{iteration}")]
    )
    return qa


def test_one_query_says_what_trained_an_iteration_and_what_dropped_the_rest(tmp_path: Path) -> None:
    with ExperienceStore(tmp_path / "store.db") as store:
        run = store.start_run("loop")
        _iteration(store, run, 1)
        qa = _iteration(store, run, 2)
    raw = sqlite3.connect(tmp_path / "store.db")
    rows = raw.execute(PROVENANCE, {"run": run, "iteration": 2}).fetchall()
    assert rows == [
        (qa[0], "synthesize_qa", "answer 0", "selfparam", None, None),
        (qa[1], "synthesize_qa", "answer 1", None, "grounding_filter", "support below 0.6"),
        (qa[2], "synthesize_qa", "answer 2", None, "grounding_filter", "duplicate"),
        (qa[3], "synthesize_qa", "answer 3", "selfparam", None, None),
    ]
    # iteration 1 stored ids 1-5 (a document, four pairs), iteration 2's document took 6
    assert qa == [7, 8, 9, 10]
    raw.close()


def test_record_step_writes_once_and_all_or_nothing(store: ExperienceStore) -> None:
    run = store.start_run("loop")
    ids = store.record_step(
        run,
        0,
        "evaluate",
        "heldout_qa",
        experiences=[make(run, 1, phase="acquire"), make("ignored", 2, iteration=7, step="x")],
        scores=[Score("f1", 0.5, "rev0"), Score("recall", 1)],
        result={"seconds": 1.5},
        model_revision="rev0",
    )
    stored = store.query(run_id=run)
    assert [(e.id, e.run_id, e.iteration, e.phase, e.step) for e in stored] == [
        (ids[0], run, 0, "evaluate", "heldout_qa"),
        (ids[1], run, 0, "evaluate", "heldout_qa"),
    ]  # a step's rows carry its run, iteration, phase and step, whatever the caller set
    again = store.record_step(run, 0, "evaluate", "heldout_qa", experiences=[make(run, 3)])
    assert again == ids and len(store) == 2  # re-running a recorded step adds nothing
    assert store.scores(run) == [
        ScoreRow("f1", 0.5, "rev0", run, 0, "evaluate", "heldout_qa"),
        ScoreRow("recall", 1.0, None, run, 0, "evaluate", "heldout_qa"),
    ]
    record = store.step_record(run, 0, "evaluate", "heldout_qa")
    assert (record.result, record.model_revision) == ({"seconds": 1.5}, "rev0")
    assert store.step_record(run, 1, "evaluate", "heldout_qa") is None

    bad = [
        (dict(decisions=[Decision(999, False, "x")]), "not stored"),
        (dict(decisions=[Decision(ids[0], False, "x"), Decision(ids[0], True, "y")]), "decides one twice"),
        (dict(decisions=[Decision(ids[0], "no", "x")]), "True or False"),
        (dict(scores=[Score("f1", 1.0), Score("f1", 2.0)]), "scored twice"),
        (dict(scores=[Score("f1", float("nan"))]), "finite"),
        (dict(experiences=[make(run, parent_id=999)]), "parent_id 999"),
    ]
    for kwargs, match in bad:
        with pytest.raises(SelfEvolveError, match=match):
            store.record_step(run, 1, "refine", "filter", **{"experiences": [make(run, 9)], **kwargs})
        assert store.step_record(run, 1, "refine", "filter") is None and len(store) == 2  # nothing written
    with pytest.raises(SelfEvolveError, match="does not exist"):
        store.record_step("nope", 0, "acquire", "documents")
    with pytest.raises(SelfEvolveError, match="phase"):
        store.record_step(run, 0, "train", "documents")

    store.record_step(run, 1, "refine", "filter", decisions=[Decision(ids[1], False, "duplicate")])
    assert store.decisions(run) == [DecisionRow(ids[1], False, "duplicate", run, 1, "refine", "filter")]
    assert store.decisions(run, iteration=0) == [] and store.decisions(run, step="filter") != []
    assert [(r.iteration, r.step) for r in store.step_records(run)] == [(0, "heldout_qa"), (1, "filter")]
    assert [e.id for e in store.query(iteration=0, step="heldout_qa")] == ids


def test_iterations_are_recorded_once(store: ExperienceStore) -> None:
    run = store.start_run("loop")
    assert store.record_iteration(run, 0, accepted=True, reason="base", best_iteration=0, result={"f1": 0.1})
    assert store.record_iteration(
        run, 1, accepted=False, reason="retention.perplexity rose 30%", best_iteration=0, model_revision="m1"
    )
    assert not store.record_iteration(run, 1, accepted=True, reason="again", best_iteration=1)
    records = store.iterations(run)
    assert [(r.iteration, r.accepted, r.reason, r.best_iteration, r.result) for r in records] == [
        (0, True, "base", 0, {"f1": 0.1}),
        (1, False, "retention.perplexity rose 30%", 0, {}),
    ]


def test_old_store_is_upgraded_in_place(tmp_path: Path) -> None:
    path = tmp_path / "v1.db"
    raw = sqlite3.connect(path)
    for statement in _MIGRATIONS[0]:
        raw.execute(statement)
    raw.execute("PRAGMA user_version = 1")
    raw.execute("INSERT INTO runs VALUES ('old', 'old run', '{}', 'finished', '2026-01-01', NULL, '{}')")
    raw.execute(
        "INSERT INTO experiences (run_id, task, prompt, response, feedback, phase, created_at, metadata)"
        " VALUES ('old', 't', 'p', 'r', 'null', 'acquire', '2026-01-01T00:00:00.000000+00:00', '{}')"
    )
    raw.commit()
    raw.close()
    with ExperienceStore(path) as store:
        (old,) = store.query()
        assert (old.id, old.prompt, old.iteration, old.step, old.parent_id) == (1, "p", None, None, None)
        (child,) = store.record_step(
            "old", 1, "acquire", "synthesize_qa", experiences=[make("old", parent_id=1)]
        )
        assert store.query(step="synthesize_qa")[0].parent_id == 1 and child == 2
    raw = sqlite3.connect(path)
    assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 2
    raw.close()


def test_import_follows_parents_inside_the_file(store: ExperienceStore, tmp_path: Path) -> None:
    run = store.start_run("r")
    (doc,) = store.add_many([make(run, 0, task="document")])
    child = store.add(make(run, 1, parent_id=doc, iteration=1, step="synthesize_qa"))
    store.export_jsonl(tmp_path / "all.jsonl")
    store.export_jsonl(tmp_path / "children.jsonl", task="gsm8k")
    with ExperienceStore(tmp_path / "copy.db") as copy:
        copy.start_run("padding")
        copy.add(make(copy.runs()[0].id, 9))  # shifts the ids: parents must be renumbered
        copy.import_jsonl(tmp_path / "all.jsonl")
        imported = copy.query(run_id=run)
        assert imported[1].parent_id == imported[0].id != doc and imported[1].step == "synthesize_qa"
        copy.import_jsonl(tmp_path / "children.jsonl", run_id=run)
        assert copy.query(run_id=run)[-1].parent_id is None  # its parent was not in the file
    assert child == doc + 1
