"""``selfevolve clean-prefs``: outputs in the input's shape, every line accounted for, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

from typer.testing import CliRunner

from selfevolve.cli import app

runner = CliRunner()


def write_pairs(path):
    lines = []
    for i in range(12):
        good, bad = "a fuller and longer answer " * 3, "short"
        record = {"prompt": f"question {i}", "chosen": good, "rejected": bad, "id": i}
        if i % 4 == 0:  # a mis-label: the short reply marked chosen
            record["chosen"], record["rejected"] = bad, good
        lines.append(json.dumps(record))
    lines.insert(5, '{"prompt": "p", "chosen": "same", "rejected": "same"}')  # line 5: identical replies
    path.write_text("\n".join(lines) + "\n")
    return path.read_bytes()


def test_clean_prefs_writes_cleaned_and_audit(tmp_path):
    data = tmp_path / "prefs.jsonl"
    before = write_pairs(data)
    out = tmp_path / "out"
    # one member, the reward len(reply): it rejects every planted mis-label with P = sigmoid(81 - 5) ~ 1
    result = runner.invoke(
        app,
        [
            "clean-prefs",
            str(data),
            "--out",
            str(out),
            "--policy",
            "remove",
            "--members",
            "tests.test_sac:length_reward",
        ],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["pairs"] == 12 and summary["skipped"] == 1
    audit = [json.loads(x) for x in (out / "audit.jsonl").read_text().splitlines()]
    assert [r["index"] for r in audit] == list(range(13))
    flagged = [r["index"] for r in audit if r["action"] == "remove"]
    assert flagged == [0, 4, 5, 9]  # records 0, 4 and 8 (lines 0, 4 and 9) are mis-labels; line 5 was skipped
    assert {r["category"] for r in audit if r["index"] in (0, 4, 9)} == {"mislabeled"}
    cleaned = [json.loads(x) for x in (out / "cleaned.jsonl").read_text().splitlines()]
    assert [c["id"] for c in cleaned] == [1, 2, 3, 5, 6, 7, 9, 10, 11]
    assert set(cleaned[0]) == {"prompt", "chosen", "rejected", "id"}
    assert data.read_bytes() == before


def test_clean_prefs_flip_policy_and_errors(tmp_path):
    data = tmp_path / "prefs.jsonl"
    write_pairs(data)
    out = tmp_path / "flip"
    result = runner.invoke(
        app, ["clean-prefs", str(data), "--out", str(out), "--members", "tests.test_sac:length_reward"]
    )
    assert result.exit_code == 0, result.output
    cleaned = [json.loads(x) for x in (out / "cleaned.jsonl").read_text().splitlines()]
    assert len(cleaned) == 12 and cleaned[0]["chosen"].startswith("a fuller")  # flipped back
    done = subprocess.run(
        [sys.executable, "-m", "selfevolve", "clean-prefs", str(tmp_path / "nope.jsonl"), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2
    assert done.stderr.strip().startswith("error: ") and len(done.stderr.strip().splitlines()) == 1
    done = subprocess.run(
        [sys.executable, "-m", "selfevolve", "clean-prefs", str(data), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2 and "holds the input" in done.stderr
    assert data.exists()
