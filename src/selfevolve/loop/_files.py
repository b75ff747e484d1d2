"""Atomic files and folders of a run directory: a crash leaves the old version or the new one, never half."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from selfevolve.runtime.model import LocalModel


def write_text_atomic(path: Path, text: str) -> Path:
    """Write ``text`` to a staging file in the same folder, then rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.tmp")
    try:
        staging.write_text(text, encoding="utf-8")
        os.replace(staging, path)
    except BaseException:
        staging.unlink(missing_ok=True)
        raise
    return path


def _staging(folder: Path) -> Path:
    """An empty staging folder beside ``folder`` (the run directory's lock keeps other writers away)."""
    staging = folder.with_name(f".{folder.name}.staging")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    return staging


def _swap_in(staging: Path, folder: Path) -> None:
    """Replace ``folder`` by ``staging``: the old folder is renamed aside first, then removed."""
    old = folder.with_name(f".{folder.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        os.replace(folder, old)
    os.replace(staging, folder)
    shutil.rmtree(old, ignore_errors=True)


def save_model_folder(model: LocalModel, folder: Path, extra: dict[str, str] | None = None) -> Path:
    """Write a model folder (weights, tokenizer and ``extra`` files) via a staging folder renamed into place."""
    from selfevolve.update.training import save_model

    staging = _staging(folder)
    try:
        save_model(model, staging)
        for name, text in (extra or {}).items():
            (staging / name).write_text(text, encoding="utf-8")
        _swap_in(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def copy_folder(source: Path, folder: Path, extra: dict[str, str] | None = None) -> Path:
    """Publish a copy of ``source`` (hard links where the file system allows) as ``folder``, atomically."""
    staging = _staging(folder)
    try:
        for item in source.iterdir():
            try:
                os.link(item, staging / item.name)
            except OSError:
                shutil.copy2(item, staging / item.name)
        for name, text in (extra or {}).items():
            (staging / name).write_text(text, encoding="utf-8")
        _swap_in(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder
