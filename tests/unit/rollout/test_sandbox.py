"""The sandboxed code tool (bubblewrap): what model-written code can do, and every escape attempt refused or killed,
with the next run unaffected."""

from __future__ import annotations

import time

import pytest

from rollout.sandbox import SandboxLimits, python_tool, run_python

LIMITS = SandboxLimits(cpu_s=2, wall_s=4.0, memory_mb=256, processes=16, output_chars=500)


def test_code_runs_and_prints():
    result = run_python("print(sum(range(10)))\nimport math; print(math.sqrt(16))", LIMITS)
    assert (result.output, result.exit_code, result.timed_out) == ("45\n4.0", 0, False)
    assert python_tool(LIMITS)("print(6 * 7)") == "42"


def test_its_tmp_is_writable_and_private():
    first = run_python("open('/tmp/note', 'w').write('kept?'); print(open('/tmp/note').read())", LIMITS)
    assert first.output == "kept?"
    assert "FileNotFoundError" in run_python("print(open('/tmp/note').read())", LIMITS).output


@pytest.mark.parametrize("name, code, expected", [
    ("read the run directory", "print(open({repo!r} + '/README.md').read())", "FileNotFoundError"),
    ("list the home directory", "import os; print(os.listdir(os.path.expanduser('~root')))", "FileNotFoundError"),
    ("write outside the sandbox", "open('/usr/escaped', 'w').write('x')", "Read-only file system"),
    ("write to the sandbox root", "open('/escaped', 'w').write('x')", "Read-only file system"),
    ("open a socket to the internet", "import socket; socket.create_connection(('1.1.1.1', 80), timeout=2)",
     "Network is unreachable"),
    ("reach a loopback service of the host", "import socket; socket.create_connection(('127.0.0.1', 22), timeout=2)",
     "Error"),
])
def test_escape_attempts_are_refused(name, code, expected):
    from pathlib import Path

    result = run_python(code.format(repo=str(Path(__file__).resolve().parents[3])), LIMITS)
    assert result.exit_code != 0, name
    assert expected in result.output, (name, result.output)


@pytest.mark.parametrize("name, code, killed_by", [
    ("fork bomb", "import os\nwhile True:\n    os.fork()", "BlockingIOError"),
    ("infinite loop", "while True:\n    pass", "killed by signal"),
    ("huge allocation", "x = bytearray(8 * 1024 ** 3)\nprint(len(x))", "MemoryError"),
    ("sleep past the wall clock", "import time\ntime.sleep(60)", "wall-clock time limit"),
    ("output flood", "while True:\n    print('x' * 1000)", "[output truncated]"),
])
def test_resource_attacks_are_stopped(name, code, killed_by):
    started = time.time()
    result = run_python(code, LIMITS)
    assert time.time() - started < LIMITS.wall_s + 3, name
    assert killed_by in result.text(), (name, result.text()[-300:])
    assert len(result.text()) < LIMITS.output_chars + 200
    assert run_python("print('still fine')", LIMITS).output == "still fine"  # the next run is unaffected
