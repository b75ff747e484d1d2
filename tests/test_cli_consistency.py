"""``selfevolve judge-consistency``: a Python callable, a served model over HTTP, and hostile input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
from typer.testing import CliRunner

from selfevolve.cli import app

runner = CliRunner()

JUDGES_MODULE = textwrap.dedent(
    """
    import math

    def total_order(question, a, b, *, negated):
        better = float(int(a) > int(b))
        return 1.0 - better if negated else better

    def always_first(question, a, b, *, negated):
        return 1.0

    def garbage_on_seven(question, a, b, *, negated):
        if "7" in (a, b):
            return "the first one, probably"
        return total_order(question, a, b, negated=negated)

    def nan_judge(question, a, b, *, negated):
        return math.nan

    def percent(question, a, b, *, negated):
        return 100.0

    def crashes(question, a, b, *, negated):
        raise RuntimeError("model offline")
    """
)
SETS = [
    {
        "id": "a",
        "question": "Which number is larger?",
        "items": ["3", "17", "8", "42", "1"],
        "gold": [3, 17, 8, 42, 1],
    },
    {
        "id": "b",
        "question": "Which number is larger?",
        "items": ["7", "2", "9", "5", "11"],
        "gold": [7, 2, 9, 5, 11],
    },
]


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    (tmp_path / "consistency_judges.py").write_text(JUDGES_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("consistency_judges", None)
    return tmp_path


def items_file(folder, sets=SETS, name="items.jsonl"):
    path = folder / name
    path.write_text("".join(json.dumps(s) + "\n" for s in sets))
    return path


def invoke(*args):
    result = runner.invoke(app, ["judge-consistency", *map(str, args)])
    assert result.exit_code == 0, result.output
    return result


def test_a_total_order_callable_scores_one_and_the_json_has_every_metric(workdir):
    out = workdir / "out.json"
    result = invoke(items_file(workdir), "--judge", "consistency_judges:total_order", "--json", out)
    assert "s_tran(5)" in result.stdout and "judge calls: 80 (0 invalid" in result.stdout
    report = json.loads(out.read_text())
    for name in ("s_tran", "s_comm", "s_neg", "gold_agreement"):
        metric = report["metrics"][name]
        assert (metric["value"], metric["low"], metric["high"]) == (1.0, 1.0, 1.0)
    # 2 sets x 5 items: 2 x 20 ordered pairs, asked once each in both polarities = 80 calls
    assert report["calls"] == 80 and report["metrics"]["s_comm"]["calls"] == 40
    assert report["metrics"]["s_tran"]["n"] == 2  # C(5, 5) = 1 subset per set
    generated = invoke("numbers:3:0", "--judge", "consistency_judges:total_order", "--json", out)
    assert "s_tran(5)" in generated.stdout and json.loads(out.read_text())["calls"] == 120  # 3 x 20 x 2


def test_always_first_position_has_zero_commutativity(workdir):
    out = workdir / "out.json"
    invoke(items_file(workdir), "--judge", "consistency_judges:always_first", "--json", out)
    metrics = json.loads(out.read_text())["metrics"]
    assert metrics["s_comm"]["value"] == 0.0 and metrics["s_neg"]["value"] == 0.0


def test_garbage_verdicts_are_counted_invalid_and_sets_without_gold_are_absent(workdir):
    out = workdir / "out.json"
    no_gold = [{k: v for k, v in s.items() if k != "gold"} for s in SETS]
    result = invoke(
        items_file(workdir, no_gold), "--judge", "consistency_judges:garbage_on_seven", "--json", out
    )
    report = json.loads(out.read_text())
    # item "7" of set b is in 4 unordered pairs = 8 ordered + 8 negated verdicts -> 16 invalid of 80
    assert report["invalid"] == 16 and report["metrics"]["s_comm"]["n_invalid"] == 4
    assert report["metrics"]["s_tran"]["n"] == 1 and report["metrics"]["s_tran"]["n_invalid"] == 1
    assert report["metrics"]["gold_agreement"] is None and "absent" in result.stdout
    assert "16 invalid" in result.stdout
    all_nan = invoke(items_file(workdir), "--judge", "consistency_judges:nan_judge", "--json", out)
    metrics = json.loads(out.read_text())["metrics"]
    assert metrics["s_comm"]["value"] is None and metrics["s_comm"]["n_invalid"] == 20
    assert "80 invalid" in all_nan.stdout


def test_the_cache_resumes_without_asking_again(workdir):
    cache, out = workdir / "verdicts.jsonl", workdir / "out.json"
    args = [items_file(workdir), "--judge", "consistency_judges:total_order", "--cache", cache, "--json", out]
    invoke(*args)
    assert len(cache.read_text().splitlines()) == 80
    invoke(*args)
    assert json.loads(out.read_text())["calls"] == 0 and len(cache.read_text().splitlines()) == 80


def test_a_judge_served_over_http_is_measured_by_the_same_command(workdir, tiny_llama):
    from selfevolve.evaluate.consistency import ConsistencyConfig, load_item_sets, measure_consistency
    from selfevolve.judges.pairwise import LogprobJudge
    from selfevolve.serve import serve_in_thread

    class TextOnly:  # the local model scoring the same text prompts the HTTP judge sends
        name = tiny_llama.name

        def score(self, prompts, continuations):
            return tiny_llama.score(prompts, continuations)

    out = workdir / "out.json"
    path = items_file(workdir, SETS[:1])
    with serve_in_thread(tiny_llama) as url:
        result = invoke(path, "--judge", url, "--json", out)
    report = json.loads(out.read_text())
    assert report["judge"] == "logprob:tiny-random-llama" and report["calls"] == 40
    assert "s_comm" in result.stdout
    local = measure_consistency(
        LogprobJudge(TextOnly()), load_item_sets(path), ConsistencyConfig(), progress=False
    )
    for name, metric in local.metrics.items():
        assert report["metrics"][name]["value"] == pytest.approx(metric.value)


def selfevolve(*args, cwd):
    inherited = [os.path.abspath(p) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(cwd), *inherited])}
    return subprocess.run(
        [sys.executable, "-m", "selfevolve", "judge-consistency", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
        env=env,
    )


def test_user_errors_are_one_line_without_traceback(workdir):
    good = items_file(workdir)
    bad_json = workdir / "bad.jsonl"
    bad_json.write_text(json.dumps(SETS[0]) + "\n" + '{"question": "Q", "items": ["a", \n')
    small = items_file(workdir, [{"question": "Q", "items": ["1", "2", "3"]}], "small.jsonl")
    cases = [
        ([bad_json, "--judge", "consistency_judges:total_order"], "bad.jsonl line 2: not valid JSON"),
        (
            [small, "--judge", "consistency_judges:total_order"],
            "no item set has k=5 items (the largest has 3)",
        ),
        ([good, "--judge", "consistency_judges:percent"], "returned 100.0, outside [0, 1]"),
        ([good, "--judge", "consistency_judges:crashes"], "raised RuntimeError: model offline"),
        ([good, "--judge", "consistency_judges:missing"], "has no attribute 'missing'"),
        ([good, "--judge", "consistency_judges:total_order", "--kind", "pointwise"], "unknown judge kind"),
        ([good, "--judge", "consistency_judges:total_order", "--k", "2"], "k must be at least 3"),
        ([workdir / "nope.jsonl", "--judge", "consistency_judges:total_order"], "not found"),
    ]
    for args, needle in cases:
        done = selfevolve(*args, cwd=workdir)
        assert done.returncode == 2, (args, done.stderr)
        assert needle in done.stderr and "Traceback" not in done.stderr, done.stderr
        lines = [
            line for line in done.stderr.splitlines() if line.strip() and "judge consistency:" not in line
        ]
        assert len(lines) == 1, done.stderr  # the one error line (besides the progress bar)
    done = selfevolve(small, "--judge", "consistency_judges:total_order", "--k", "3", cwd=workdir)
    assert done.returncode == 0 and "s_tran(3)" in done.stdout, done.stderr
