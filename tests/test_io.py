"""Atomic files and folders: a failed write leaves the old version whole and no staging file behind."""

from __future__ import annotations

import json

import pytest

from selfevolve.errors import SelfEvolveError
from selfevolve.io import append_jsonl, publish_folder, read_jsonl, write_json, write_jsonl, write_text


class Boom(Exception):
    pass


def test_a_failed_write_keeps_the_old_file_and_leaves_nothing_behind(tmp_path):
    path = write_text(tmp_path / "sub" / "a.txt", "old")
    assert path.read_text() == "old"

    def records():
        yield {"x": 1}
        raise Boom

    with pytest.raises(Boom):
        write_jsonl(path, records())
    assert path.read_text() == "old"
    assert [p.name for p in path.parent.iterdir()] == ["a.txt"]


def test_json_and_jsonl_round_trip(tmp_path):
    write_jsonl(tmp_path / "r.jsonl", [{"a": "é"}, {"b": [1, 2]}])
    append_jsonl(tmp_path / "r.jsonl", {"c": None})
    assert list(read_jsonl(tmp_path / "r.jsonl")) == [(1, {"a": "é"}), (2, {"b": [1, 2]}), (3, {"c": None})]
    assert json.loads(write_json(tmp_path / "d.json", {"k": 1.5}).read_text()) == {"k": 1.5}
    with pytest.raises(SelfEvolveError, match="not found"):
        list(read_jsonl(tmp_path / "missing.jsonl"))


def test_a_folder_is_published_whole_or_not_at_all(tmp_path):
    folder = tmp_path / "model"
    with publish_folder(folder) as staging:
        (staging / "w.bin").write_text("v1")
    with pytest.raises(Boom), publish_folder(folder) as staging:
        (staging / "w.bin").write_text("half")
        raise Boom
    assert (folder / "w.bin").read_text() == "v1"
    with publish_folder(folder) as staging:
        (staging / "other.bin").write_text("v2")
    assert [p.name for p in folder.iterdir()] == ["other.bin"]
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no staging or old folder left
