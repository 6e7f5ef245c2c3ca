"""The sandboxed code tool: model-written Python run in bubblewrap (`bwrap`, Debian's `bubblewrap` package, the
unprivileged sandbox Flatpak uses), never in Leapfrog's own process.

What the code gets: the system's Python under /usr (`/usr/bin/python3`, read-only, without the project's virtual
environment or its packages), an empty 64 MiB tmpfs as /tmp (its working directory, the only writable place: the sandbox's root is remounted
read-only), its own /proc and a
minimal /dev. What it does not get: the network (a new, empty network namespace), the host's files (nothing else is
mounted: not the run directory, not $HOME), other processes (a new PID namespace; it dies with its parent), root
(when Leapfrog runs as root the sandbox runs as `nobody`). Limits (`prlimit`, util-linux): CPU seconds, address space,
processes of its user, bytes written to a file; a wall-clock timeout kills the whole sandbox. stdout and stderr go to
a host file whose size is capped (RLIMIT_FSIZE kills a flood), then are truncated to `output_chars`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

NOBODY = 65534


@dataclass(frozen=True)
class SandboxLimits:
    cpu_s: int = 5
    wall_s: float = 10.0
    memory_mb: int = 512
    processes: int = 32
    output_chars: int = 2000
    file_mb: int = 8
    tmp_mb: int = 64


@dataclass(frozen=True)
class SandboxResult:
    output: str  # stdout then stderr, truncated to output_chars
    exit_code: int | None  # None when killed by the wall-clock timeout
    timed_out: bool

    def text(self) -> str:
        """What the model reads."""
        if self.timed_out:
            return (self.output + "\n" if self.output else "") + "Error: killed (wall-clock time limit)"
        if self.exit_code is not None and self.exit_code >= 128:  # bwrap's status for a child killed by a signal
            return (self.output + "\n" if self.output else "") + \
                f"Error: killed by signal {self.exit_code - 128} (a CPU-time, memory or output limit)"
        return self.output


def sandbox_problem() -> str | None:
    """Why the sandbox cannot run here (None when it can)."""
    for tool, package in (("bwrap", "bubblewrap"), ("prlimit", "util-linux")):
        if shutil.which(tool) is None:
            return f"the code tool needs {tool!r}, which is not installed: apt-get install {package} (make test does)"
    return None


def sandbox_python() -> str:
    """The interpreter the sandbox runs: the system's Python under /usr (the only tree mounted inside)."""
    for path in ("/usr/bin/python3", "/usr/local/bin/python3"):
        if Path(path).is_file():
            return path
    raise RuntimeError("the code tool runs the system's Python, but /usr/bin/python3 is missing: apt-get install "
                       "python3-minimal")


def _command(python: str, limits: SandboxLimits, processes: int) -> list[str]:
    binds = ["--ro-bind", "/usr", "/usr"]
    for link, target in (("/bin", "usr/bin"), ("/lib", "usr/lib"), ("/lib64", "usr/lib64"), ("/sbin", "usr/sbin")):
        if Path(link).is_symlink():
            binds += ["--symlink", target, link]
        elif Path(link).is_dir():
            binds += ["--ro-bind", link, link]
    return ["prlimit", f"--cpu={limits.cpu_s}", f"--as={limits.memory_mb * 2**20}", f"--nproc={processes}",
            f"--fsize={limits.file_mb * 2**20}", "--core=0", "--",
            "bwrap", *binds, "--proc", "/proc", "--dev", "/dev", "--size", str(limits.tmp_mb * 2**20),
            "--tmpfs", "/tmp", "--remount-ro", "/", "--chdir", "/tmp", "--unshare-all", "--die-with-parent",
            "--new-session",
            "--cap-drop", "ALL", "--clearenv", "--setenv", "PATH", "/usr/bin:/bin", "--setenv", "HOME", "/tmp",
            "--setenv", "PYTHONDONTWRITEBYTECODE", "1", python, "-I", "-"]


def run_python(code: str, limits: SandboxLimits = SandboxLimits()) -> SandboxResult:
    """Run `code` with the system Python inside the sandbox (module docstring); never raises for what the code does."""
    problem = sandbox_problem()
    if problem:
        raise RuntimeError(problem)
    python = sandbox_python()
    as_root = os.geteuid() == 0
    # RLIMIT_NPROC counts every process of the user: as `nobody` that is the sandbox's own; as a normal user, the
    # processes it already runs plus the sandbox's allowance
    processes = limits.processes if as_root else _user_processes() + limits.processes
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(_command(python, limits, processes), stdin=subprocess.PIPE, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                **({"user": NOBODY, "group": NOBODY, "extra_groups": []} if as_root else {}))
        timed_out = False
        try:
            proc.communicate(code.encode(), timeout=limits.wall_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_group(proc)
            proc.wait()
        out.seek(0)
        raw = out.read(limits.output_chars * 4 + 64).decode(errors="replace")
    text = raw if len(raw) <= limits.output_chars else raw[:limits.output_chars] + "\n[output truncated]"
    return SandboxResult(text.rstrip("\n"), None if timed_out else proc.returncode, timed_out)


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, 9)
    except ProcessLookupError:
        pass


def _user_processes() -> int:
    uid = os.getuid()
    return sum(1 for p in Path("/proc").iterdir() if p.name.isdigit() and _owner(p) == uid)


def _owner(path: Path) -> int | None:
    try:
        return path.stat().st_uid
    except OSError:
        return None


def python_tool(limits: SandboxLimits = SandboxLimits()):
    """The built-in `python` tool: runs the code in the sandbox and returns what it printed."""

    def python(code: str) -> str:
        """Run Python code in a sandbox (no network, no files outside its temporary directory, time and memory
        limits) and return what it prints. Use print() to see results.

        Args:
            code: The Python program to run.
        """
        return run_python(code, limits).text()

    return python
