"""The execution tracer: exact inline renderings, results equal to plain runs, the token budget, the CLI."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import textwrap

import pytest

from selfevolve.acquire.trace import (
    LineTrace,
    Trace,
    TraceConfig,
    TraceEvent,
    estimate_tokens,
    logical_lines,
    pure_lines,
    token_counter,
    trace_call,
    trace_many,
)
from selfevolve.errors import SelfEvolveError


def code(text: str) -> str:
    return textwrap.dedent(text).lstrip()


def rendered(program: str, call: str, **config) -> str:
    return trace_call(code(program), call, TraceConfig(**config)).render(TraceConfig(**config))


def test_loop():
    program = """
        def total(xs):
            s = 0
            for x in xs:
                s += x
            return s
        """
    assert rendered(program, "total([1, 2])") == code("""
        def total(xs):  # (0) xs=[1, 2]
            s = 0  # (1) s=0
            for x in xs:  # (2) x=1; (4) x=2; (6)
                s += x  # (3) s=1; (5) s=3
            return s  # (7) __return__=3
        # call: total([1, 2])
        # returned: 3
        """)


def test_nested_calls():
    program = """
        def square(v):
            return v * v

        def norm(a, b):
            aa = square(a)
            bb = square(b)
            return aa + bb
        """
    assert rendered(program, "norm(2, 3)") == code("""
        def square(v):  # (2) v=2; (5) v=3
            return v * v  # (3) __return__=4; (6) __return__=9

        def norm(a, b):  # (0) a=2, b=3
            aa = square(a)  # (1) aa=4
            bb = square(b)  # (4) bb=9
            return aa + bb  # (7) __return__=13
        # call: norm(2, 3)
        # returned: 13
        """)


def test_recursion():
    program = """
        def fact(n):
            if n <= 1:
                return 1
            return n * fact(n - 1)
        """
    trace = trace_call(code(program), "fact(3)")
    assert trace.render() == code("""
        def fact(n):  # (0) n=3; (3) n=2; (6) n=1
            if n <= 1:  # (1); (4); (7)
                return 1  # (8) __return__=1
            return n * fact(n - 1)  # (2) __return__=6; (5) __return__=2
        # call: fact(3)
        # returned: 6
        """)
    assert [(e.index, e.call, e.depth) for e in trace.lines[1].events] == [(0, 1, 1), (3, 2, 2), (6, 3, 3)]


def test_exceptions_caught_and_raised():
    program = """
        def safe_div(a, b):
            try:
                q = a / b
            except ZeroDivisionError:
                q = None
            return q

        def check(x):
            if x < 0:
                raise ValueError(f"negative: {x}")
            return safe_div(1, x)
        """
    assert rendered(program, "check(0)") == code("""
        def safe_div(a, b):  # (3) a=1, b=0
            try:  # (4)
                q = a / b  # (5) __exception__=ZeroDivisionError('division by zero')
            except ZeroDivisionError:  # (6)
                q = None  # (7) q=None
            return q  # (8) __return__=None

        def check(x):  # (0) x=0
            if x < 0:  # (1)
                raise ValueError(f"negative: {x}")
            return safe_div(1, x)  # (2) __return__=None
        # call: check(0)
        # returned: None
        """)
    assert rendered(program, "check(-2)") == code("""
        def safe_div(a, b):
            try:
                q = a / b
            except ZeroDivisionError:
                q = None
            return q

        def check(x):  # (0) x=-2
            if x < 0:  # (1)
                raise ValueError(f"negative: {x}")  # (2) __exception__=ValueError('negative: -2')
            return safe_div(1, x)
        # call: check(-2)
        # raised: ValueError: negative: -2
        """)


def test_list_and_dict_mutation_through_aliases():
    program = """
        def group(words):
            seen = {}
            firsts = []
            for w in words:
                seen.setdefault(w[0], []).append(w)
                if len(seen[w[0]]) == 1:
                    firsts.append(w)
            firsts.sort(reverse=True)
            alias = firsts
            alias[0] = alias[0].upper()
            return seen, firsts
        """
    assert rendered(program, "group(['ab', 'b', 'ac'])", value_width=60) == code("""
        def group(words):  # (0) words=['ab', 'b', 'ac']
            seen = {}  # (1) seen={}
            firsts = []  # (2) firsts=[]
            for w in words:  # (3) w='ab'; (7) w='b'; (11) w='ac'; (14)
                seen.setdefault(w[0], []).append(w)  # (4) seen={'a': ['ab']}; (8) seen={'a': ['ab'], 'b': ['b']}; (12) seen={'a': ['ab', 'ac'], 'b': ['b']}
                if len(seen[w[0]]) == 1:  # (5); (9); (13)
                    firsts.append(w)  # (6) firsts=['ab']; (10) firsts=['ab', 'b']
            firsts.sort(reverse=True)  # (15) firsts=['b', 'ab']
            alias = firsts  # (16) alias=['b', 'ab']
            alias[0] = alias[0].upper()  # (17) firsts=['B', 'ab'], alias=['B', 'ab']
            return seen, firsts  # (18) __return__=({'a': ['ab', 'ac'], 'b': ['b']}, ['B', 'ab'])
        # call: group(['ab', 'b', 'ac'])
        # returned: ({'a': ['ab', 'ac'], 'b': ['b']}, ['B', 'ab'])
        """)


def test_nested_containers_and_sets_are_shown_as_they_were_then():
    program = """
        def fill(n):
            grid = [[0] * n for _ in range(n)]
            row = grid[0]
            row[1] = 5
            seen = {(0, 1)}
            seen.add((1, 1))
            grid[1][1] = seen
            buffer = bytearray(b"a")
            buffer += b"b"
            return len(grid)
        """
    assert rendered(program, "fill(2)", value_width=60) == code("""
        def fill(n):  # (0) n=2
            grid = [[0] * n for _ in range(n)]  # (1) grid=[[0, 0], [0, 0]]; (2) _=0; (3) _=1
            row = grid[0]  # (4) row=[0, 0]
            row[1] = 5  # (5) grid=[[0, 5], [0, 0]], row=[0, 5]
            seen = {(0, 1)}  # (6) seen={(0, 1)}
            seen.add((1, 1))  # (7) seen={(0, 1), (1, 1)}
            grid[1][1] = seen  # (8) grid=[[0, 5], [0, {(0, 1), (1, 1)}]]
            buffer = bytearray(b"a")  # (9) buffer=bytearray(b'a')
            buffer += b"b"  # (10) buffer=bytearray(b'ab')
            return len(grid)  # (11) __return__=2
        # call: fill(2)
        # returned: 2
        """)


def test_long_containers_keep_their_kind_when_shortened():
    program = """
        from collections import deque

        def grow(n):
            s, q = set(), deque()
            for i in range(n):
                s.add(i)
                q.append(i)
            return len(s) + len(q)
        """
    lines = rendered(program, "grow(300)", value_width=24).splitlines()
    assert lines[5].endswith("(900) s={0, 1, 2, 3, 4, 5, 6, 7…")
    assert lines[6].endswith("(901) q=deque([0, 1, 2, 3, 4, 5…")


def test_generators():
    program = """
        def evens(n):
            for i in range(n):
                if i % 2 == 0:
                    yield i
            return "done"

        def collect(n):
            out = []
            for v in evens(n):
                out.append(v)
            return out
        """
    assert rendered(program, "collect(3)") == code("""
        def evens(n):  # (3) n=3
            for i in range(n):  # (4) i=0; (9) i=1; (11) i=2; (16)
                if i % 2 == 0:  # (5); (10); (12)
                    yield i  # (6) __yield__=0; (13) __yield__=2
            return "done"  # (17) __return__='done'

        def collect(n):  # (0) n=3
            out = []  # (1) out=[]
            for v in evens(n):  # (2) v=0; (8) v=2; (15)
                out.append(v)  # (7) out=[0]; (14) out=[0, 2]
            return out  # (18) __return__=[0, 2]
        # call: collect(3)
        # returned: [0, 2]
        """)


def test_comprehensions():
    program = """
        def shape(xs):
            squares = [x * x for x in xs]
            total = sum(s for s in squares if s > 1)
            return {k: v for k, v in zip(xs, squares)}, total
        """
    if sys.version_info >= (3, 12):  # comprehensions run inline in the function's frame (PEP 709)
        body = """
            squares = [x * x for x in xs]  # (1) x=1; (2) x=2; (3) x=3; (4) squares=[1, 4, 9]
            total = sum(s for s in squares if s > 1)  # (5) total=13; (6) s=1; (7) s=4; (8) s=9
            return {k: v for k, v in zip(xs, squares)}, total  # (9) k=1, v=1; (10) k=2, v=4; (11) k=3, v=9; (12) __return__=({1: 1, 2: 4, 3: 9}, 13)
            """
    else:  # each comprehension runs in a frame of its own, whose runs come after the statement's
        body = """
            squares = [x * x for x in xs]  # (1) squares=[1, 4, 9]; (2) x=1; (3) x=2; (4) x=3
            total = sum(s for s in squares if s > 1)  # (5) total=13; (6) s=1; (7) s=4; (8) s=9
            return {k: v for k, v in zip(xs, squares)}, total  # (9) __return__=({1: 1, 2: 4, 3: 9}, 13); (10) k=1, v=1; (11) k=2, v=4; (12) k=3, v=9
            """
    expected = (
        "def shape(xs):  # (0) xs=[1, 2, 3]\n"
        + textwrap.indent(code(body), "    ")
        + "# call: shape([1, 2, 3])\n# returned: ({1: 1, 2: 4, 3: 9}, 13)\n"
    )
    assert rendered(program, "shape([1, 2, 3])") == expected


def test_early_return_skips_the_rest():
    program = """
        def first_negative(xs):
            for i, x in enumerate(xs):
                if x < 0:
                    return i
            return -1
        """
    assert rendered(program, "first_negative([3, -1, -2])") == code("""
        def first_negative(xs):  # (0) xs=[3, -1, -2]
            for i, x in enumerate(xs):  # (1) i=0, x=3; (3) i=1, x=-1
                if x < 0:  # (2); (4)
                    return i  # (5) __return__=1
            return -1
        # call: first_negative([3, -1, -2])
        # returned: 1
        """)


def test_many_runs_of_a_line_show_the_first_and_last():
    program = """
        def count_up(n):
            k = 0
            while k < n:
                k += 1
            return k
        """
    assert rendered(program, "count_up(50)") == code("""
        def count_up(n):  # (0) n=50
            k = 0  # (1) k=0
            while k < n:  # (2); (4); (6); … (47 more); (102)
                k += 1  # (3) k=1; (5) k=2; (7) k=3; … (46 more); (101) k=50
            return k  # (103) __return__=50
        # call: count_up(50)
        # returned: 50
        """)
    assert rendered(program, "count_up(50)", first=1, last=2).splitlines()[3] == (
        "        k += 1  # (3) k=1; … (47 more); (99) k=49; (101) k=50"
    )


def test_statements_over_several_lines_and_decorators_keep_the_program_valid():
    program = """
        import functools

        @functools.lru_cache(maxsize=None)
        def area(w,
                 h):
            text = '''a
        b'''
            return w * \\
                h
        """
    output = rendered(program, "area(2, 3)")
    assert output == code("""
        import functools

        @functools.lru_cache(maxsize=None)
        def area(w,
                 h):  # (0) w=2, h=3
            text = '''a
        b'''  # (1) text='a\\nb'
            return w * \\
                h  # (2) __return__=6
        # call: area(2, 3)
        # returned: 6
        """)
    ast.parse(output)  # every comment landed where a comment may go


def test_objects_show_their_attributes_and_long_values_are_cut():
    program = """
        class Box:
            def __init__(self):
                self.items = []

            def put(self, item):
                self.items.append(item)

        def make(n):
            box = Box()
            box.put(n)
            digits = "7" * n
            return box, digits, make
        """
    assert rendered(program, "make(1)", value_width=80) == code("""
        class Box:
            def __init__(self):  # (2) self=Box()
                self.items = []  # (3) self=Box(items=[]), __return__=None

            def put(self, item):  # (5) self=Box(items=[]), item=1
                self.items.append(item)  # (6) self=Box(items=[1]), __return__=None

        def make(n):  # (0) n=1
            box = Box()  # (1) box=Box(items=[])
            box.put(n)  # (4) box=Box(items=[1])
            digits = "7" * n  # (7) digits='7'
            return box, digits, make  # (8) __return__=(<__program__.Box object>, '7', <function make>)
        # call: make(1)
        # returned: (Box(items=[1]), '7', <function make>)
        """)
    cut = rendered(program, "make(100)", value_width=12).splitlines()
    assert cut[10:12] == [
        '    digits = "7" * n  # (7) digits=\'7777777777…',
        "    return box, digits, make  # (8) __return__=(<__program…",
    ]


@pytest.mark.parametrize(
    "call", ["f(3, [1, 2])", "f(0, [])", "g('abc')", "g('')", "h({'a': [1]})", "sorted(h({'b': 2, 'a': 1}))"]
)
def test_traced_result_equals_the_plain_run(call):
    program = code("""
        def f(n, xs):
            out = [x * n for x in xs]
            out.extend(range(n))
            return out, sum(out)

        def g(s):
            return {c: s.count(c) for c in sorted(set(s))}

        def h(d):
            d = dict(d)
            d["z"] = len(d)
            return d
        """)
    traced, plain = trace_call(program, call), trace_call(program, call, traced=False)
    namespace: dict = {}
    exec(program, namespace)
    assert traced.status == plain.status == "returned"
    assert traced.value == plain.value == repr(eval(call, namespace))
    assert plain.lines == {} and traced.lines


def test_statement_calls_report_the_test_outcome():
    program = "def inc(x):\n    return x + 2\n"
    assert trace_call(program, "assert inc(1) == 3").render().endswith("# completed\n")
    failed = trace_call(program, "assert inc(1) == 2")
    assert failed.status == "raised" and failed.exception == "AssertionError"
    assert failed.render().splitlines()[-2:] == ["# call: assert inc(1) == 2", "# raised: AssertionError"]


def test_runaway_programs_are_stopped_with_their_trace():
    program = code("""
        import time

        def spin():
            i = 0
            while True:
                i += 1

        def crawl():
            while True:
                time.sleep(0.05)
        """)
    spun = trace_call(program, "spin()", TraceConfig(max_steps=1000))
    assert spun.status == "limit" and spun.steps == 1000
    assert spun.render().splitlines()[-1] == "# stopped after 1000 steps (an infinite loop?)"
    assert "(999) i=499" in spun.render()
    crawled = trace_call(program, "crawl()", TraceConfig(timeout_s=1.0))
    assert crawled.status == "limit" and 5 < crawled.steps < 40  # the harness's own deadline: 0.8 s


def test_programs_that_fail_to_load_or_kill_themselves():
    broken = trace_call("x = 1 / 0\ndef f():\n    return 1\n", "f()")
    assert broken.status == "error" and broken.exception == "ZeroDivisionError: division by zero"
    assert broken.render().endswith("# failed to load: ZeroDivisionError: division by zero\n")
    gone = trace_call("import os\ndef f():\n    os._exit(3)\n", "f()")
    assert gone.status == "killed" and gone.lines == {}
    with pytest.raises(SelfEvolveError, match="not valid Python"):
        trace_call("def f(:\n", "f()")
    with pytest.raises(SelfEvolveError, match="is not valid Python"):
        trace_call("def f():\n    return 1\n", "f(")


def test_the_program_output_is_captured_not_mixed_in():
    trace = trace_call("def f():\n    print('@@selfevolve-trace@@ hi')\n    return 2\n", "f()")
    assert trace.value == "2" and trace.output == "@@selfevolve-trace@@ hi\n"


def test_a_forged_result_is_not_taken():
    """The old channel (a sentinel line on stdout, then exit 0) and fake lines on every descriptor: the call
    never returned, so there is no value, whatever the program wrote."""
    forged = b'@@selfevolve-trace@@{"status": "returned", "value": "42", "steps": 0, "seconds": 0.0}\n'
    lines = [forged, b'["returned", 42]\n', b'{"value": 42}\n']
    program = (
        "import os\n\ndef f(x):\n    for fd in range(1, 64):\n"
        f"        for line in {lines!r}:\n"
        "            try:\n                os.write(fd, line)\n            except OSError:\n                pass\n"
        "    os._exit(0)\n"
    )
    for call in ("f(1)", "assert f(1) == 42"):
        trace = trace_call(program, call)
        assert trace.status in ("raised", "killed") and trace.value is None, trace
        assert not trace.render().endswith(("# returned: 42\n", "# completed\n"))


def test_the_call_is_judged_outside_the_program():
    """The statement runs in the harness: the program's patched builtins are its own, and a value that only
    pretends to be equal is not data."""
    program = code("""
        import builtins

        builtins.AssertionError = type("Quiet", (Exception,), {})
        builtins.abs = lambda x: 3

        class Yes(int):
            def __eq__(self, other):
                return True

            __hash__ = int.__hash__

        def f(x):
            return Yes(-x)

        def g(x):
            return object()
        """)
    failed = trace_call(program, "assert abs(f(1)) == 3")
    assert (failed.status, failed.exception) == ("raised", "AssertionError")
    opaque = trace_call(program, "assert g(1) == 1")
    assert opaque.status == "raised" and opaque.exception == "AssertionError"
    assert trace_call(program, "g(1)").value == "<object object>"
    assert trace_call(program, "f(2)").returns == ("-2",)


def test_calls_see_only_the_programs_functions_and_plain_data():
    program = "LIMIT = 3\nclass Box:\n    pass\ndef f(x):\n    return x\ndef abs(x):\n    return 0\n"
    assert trace_call(program, "abs(f(-2))").value == "2"  # the builtin, not the program's abs
    assert trace_call(program, "f(LIMIT)").exception == "NameError: name 'LIMIT' is not defined"
    passed = trace_call(program, "f(f)")
    assert passed.status == "raised" and "is not plain data" in passed.exception


def test_trace_many_keeps_the_order():
    jobs = [("def f(x):\n    return x * 2\n", f"f({i})", "") for i in range(4)]
    assert [t.value for t in trace_many(jobs, workers=2)] == ["0", "2", "4", "6"]


def long_trace() -> Trace:
    """A synthetic trace: 30 lines each run 50 times, with long values."""
    lines = {}
    for line in range(1, 31):
        runs = (0, 1, 2, 49)
        events = tuple(
            TraceEvent(k * 30 + line, line, 1, 1, (("v", repr(list(range(k + 20)))),)) for k in runs
        )
        lines[line] = LineTrace(50, events)
    program = "".join(f"v = {i}\n" for i in range(30))
    return Trace(program, "main()", "returned", "None", None, 1500, 0.1, "", lines)


def annotations(output: str, program: str) -> tuple[list[str], list[str]]:
    """The comments added to the program's lines, and the outcome lines after it."""
    lines, source = output.splitlines(), program.splitlines()
    comments = [line[len(src) :] for line, src in zip(lines, source) if line != src]
    return comments, lines[len(source) :]


@pytest.mark.parametrize("budget", [64, 100, 200, 400, 800, 1600, 3200, 10_000])
def test_the_trace_fits_the_budget_without_cuts(budget):
    trace = long_trace()
    comments, outcome = annotations(
        trace.render(TraceConfig(token_budget=budget, value_width=80)), trace.program
    )
    assert estimate_tokens("\n".join([*comments, *outcome])) <= budget
    assert outcome == ["# call: main()", "# returned: None"]
    run = r"\(\d+\)( v=\[[^;]*)?|… \(\d+ more\)|×50"
    for comment in comments:  # every comment is whole: runs, gaps or counts separated by "; "
        assert re.fullmatch(rf"  # ({run})(; ({run}))*", comment), comment
        assert all(value.endswith(("]", "…")) for value in re.findall(r"v=([^;]*)", comment))


def test_a_bigger_budget_never_shows_less():
    trace = long_trace()
    budgets = (64, 200, 800, 3200, 10_000)
    sizes = [len(trace.render(TraceConfig(token_budget=b, value_width=80))) for b in budgets]
    assert sizes == sorted(sizes) and sizes[0] < sizes[-1]


def test_a_tokenizer_can_count_the_budget(tiny_llama):
    count = token_counter(tiny_llama.tokenizer)
    trace = long_trace()
    for budget in (400, 1500):  # byte-level: about three times as many tokens as the estimate counts
        output = trace.render(TraceConfig(token_budget=budget), count)
        comments, outcome = annotations(output, trace.program)
        assert comments and count("\n".join([*comments, *outcome])) <= budget
        assert estimate_tokens("\n".join([*comments, *outcome])) < budget / 2


def test_statement_analysis():
    program = code("""
        def f(xs, d):
            n = len(xs)
            total = 0
            total += n
            xs += [1]
            d[0] = n
            xs.append(2)
            if xs[0] > n and d.get(0):
                return sorted(xs)
            total = (1 +
                     2)
            return g(xs)
        """)
    assert pure_lines(program) == {
        2: ["n"],
        3: ["total"],
        4: ["total"],
        5: ["xs"],
        8: [],
        9: [],
        10: ["total"],
    }
    starts, anchors = logical_lines(program)
    assert starts[11] == 10 and anchors[10] == 11 and anchors[1] == 1


def test_config_is_checked():
    with pytest.raises(ValueError, match="value_width"):
        TraceConfig(value_width=3)
    with pytest.raises(ValueError, match="token_budget"):
        TraceConfig(token_budget=10)
    with pytest.raises(ValueError, match="first and last"):
        TraceConfig(last=0)


def selfevolve(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "selfevolve", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def test_cli_prints_the_trace(tmp_path):
    path = tmp_path / "prog.py"
    path.write_text("def f(n, xs):\n    total = sum(xs)\n    return total * n\n")
    done = selfevolve("trace", str(path), "--call", "f(3, [1,2])")
    assert done.returncode == 0, done.stderr
    assert done.stdout == code("""
        def f(n, xs):  # (0) n=3, xs=[1, 2]
            total = sum(xs)  # (1) total=3
            return total * n  # (2) __return__=9
        # call: f(3, [1,2])
        # returned: 9
        """)


@pytest.mark.parametrize(
    ("source", "call", "needle"),
    [
        (None, "f(1)", "does not exist"),
        ("def f(:\n    pass\n", "f(1)", "is not valid Python (line 1)"),
        ("def f(x):\n    return x\n", "f(1,", "is not valid Python"),
        ("def f(x):\n    return x\n", "f(1) +* 2", "is not valid Python"),
        ("def f(x):\n    return x\n", "g(1)", "--call uses g, which"),
    ],
)
def test_cli_user_mistakes_are_one_line(tmp_path, source, call, needle):
    path = tmp_path / "prog.py"
    if source is not None:
        path.write_text(source)
    done = selfevolve("trace", str(path), "--call", call)
    assert done.returncode == 2
    assert needle in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_cli_reports_raising_and_runaway_calls(tmp_path):
    path = tmp_path / "prog.py"
    path.write_text(
        code("""
        import time

        def boom(x):
            return 1 / x

        def wait():
            while True:
                time.sleep(0.1)

        def block():
            time.sleep(60)
        """)
    )
    raised = selfevolve("trace", str(path), "--call", "boom(0)")
    assert raised.returncode == 1 and "Traceback" not in raised.stderr
    assert "return 1 / x  # (1) __exception__=ZeroDivisionError('division by zero')" in raised.stdout
    assert raised.stdout.endswith("# raised: ZeroDivisionError: division by zero\n")
    slow = selfevolve("trace", str(path), "--call", "wait()", "--timeout", "1")
    assert slow.returncode == 1 and "# stopped after" in slow.stdout and "Traceback" not in slow.stderr
    stuck = selfevolve("trace", str(path), "--call", "block()", "--timeout", "1")
    assert stuck.returncode == 1 and stuck.stdout.endswith("# timed out after 1 s\n")


def test_imports_and_nested_functions_are_not_variables():
    program = """
        def roots(xs):
            import math

            def root(x):
                return math.sqrt(x)

            return [root(x) for x in xs], math
        """
    lines = rendered(program, "roots([4])").splitlines()
    assert lines[:3] == ["def roots(xs):  # (0) xs=[4]", "    import math  # (1)", ""]
    assert lines[3] == "    def root(x):  # (2); (4) x=4"
    assert lines[-1] == "# returned: ([2.0], <module 'math'>)"
