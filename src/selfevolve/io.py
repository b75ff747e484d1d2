"""Files every layer writes and reads: atomic writes (a crash leaves the old version or the new one, never half),
atomic folder publishing, and the JSON-lines format with one-line errors for unreadable files.

A file is written to a uniquely named staging file in its own folder, flushed to disk and renamed over the
target (``os.replace`` is atomic within a file system); a folder is filled beside its target and renamed in.
"""

from __future__ import annotations

import gzip
import json
import os
import secrets
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

from selfevolve.errors import SelfEvolveError


@contextmanager
def atomic_open(path: str | Path) -> Iterator[TextIO]:
    """A text handle (UTF-8) whose content replaces ``path`` only when the ``with`` block ends without error."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        with staging.open("x", encoding="utf-8") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(staging, path)
    except BaseException:
        staging.unlink(missing_ok=True)
        raise


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically."""
    with atomic_open(path) as handle:
        handle.write(text)
    return Path(path)


def write_json(path: str | Path, data: Any) -> Path:
    """Write ``data`` as indented JSON, atomically."""
    return write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def write_jsonl(path: str | Path, records: Iterable[dict]) -> Path:
    """Write ``records`` as JSON lines, atomically."""
    with atomic_open(path) as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    return Path(path)


def append_jsonl(path: str | Path, record: dict) -> None:
    """Append one JSON line with a single write, flushed to disk, so a crash never leaves half a record."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def publish_folder(folder: str | Path) -> Iterator[Path]:
    """An empty staging folder beside ``folder``; when the ``with`` block ends without error it replaces
    ``folder`` (the old one is renamed aside, then removed). On an error ``folder`` is left as it was."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".staging", dir=folder.parent))
    try:
        yield staging
        aside = folder.with_name(f".{folder.name}.{secrets.token_hex(4)}.old")
        if folder.exists():
            os.replace(folder, aside)
        os.replace(staging, folder)
        shutil.rmtree(aside, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


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
