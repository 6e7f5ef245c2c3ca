"""Every command in the README and in the docs it moved its reference material to (docs/results.md, docs/config.md)
is exercised: the cheap ones run for real, the others are parsed by the program that would run them (leapfrog's and
the driver's argument parsers, make's dry run, the API's OpenAPI routes, the files they name). An unknown kind of
command fails the test, so new commands in those files must be covered here. The config reference in docs/config.md
is the generated one."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.integration
DOCUMENTS = ("README.md", "docs/results.md", "docs/config.md")  # every ```bash block command of these is checked


def readme_commands(document: str = "README.md") -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", (REPO / document).read_text(), re.S)
    commands = []
    for block in blocks:
        for line in block.splitlines():
            line = line.split("  #", 1)[0].strip()
            if line and not line.startswith("#"):
                commands.append(line)
    return commands


def test_every_document_has_commands():
    for document in DOCUMENTS:
        assert readme_commands(document), f"no ```bash command found in {document}: the pattern or the file is wrong"


def test_the_two_commands_come_first_and_ci_runs_the_second():
    first = readme_commands()[:2]
    assert first == ["make demo", "make test"]
    assert (REPO / ".ci" / "run").read_text().strip().splitlines()[-1].strip() == "make test"


def run_leapfrog(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "services.cli", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120)


CHEAP = {("config", "schema"), ("config", "reference")}


def check(command: str) -> str:
    """What was done to check the command (raises on a problem)."""
    from services.cli import build_parser

    words = shlex.split(command)
    while words and re.fullmatch(r"[A-Z_]+=.*", words[0]):  # VAR=value prefixes
        words.pop(0)
    program = words[0]
    if program == "make":
        res = subprocess.run(["make", "-n", *words[1:]], cwd=REPO, capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, res.stderr
        return "make -n"
    if program.endswith("leapfrog"):
        args = words[1:]
        parsed = build_parser().parse_args(args)  # SystemExit on a bad command line
        if tuple(args[:2]) in CHEAP:
            res = run_leapfrog(args)
            assert res.returncode == 0 and res.stdout, res.stderr
            return "ran"
        value = getattr(parsed, "config", None)
        if value and value.endswith(".yaml"):
            assert (REPO / value).is_file(), value
        return f"parsed ({parsed.command})"
    if program.endswith("python") and words[1].startswith("bench/"):
        res = subprocess.run([sys.executable, words[1], "--help"], cwd=REPO, capture_output=True, text=True, timeout=120)
        assert res.returncode == 0 and "Last line" in res.stdout, res.stderr
        return "bench --help"
    if program.endswith("ray") and words[1:3] == ["job", "submit"]:
        entry = words[words.index("--") + 1:]
        assert entry[:3] == ["python", "-m", "services.driver"] and (REPO / entry[3]).is_file()
        return "ray job submit entrypoint checked"
    if program == "deploy/ray-local.sh":
        assert words[1] in ("start", "stop", "status") and (REPO / program).is_file()
        return "script and action exist"
    if program == "curl":
        url = next(w for w in words if w.startswith("http://"))
        path = "/" + url.split("/", 3)[3]
        from services.api import Settings, create_app

        routes = create_app(None, None, Settings()).openapi()["paths"]  # the document only; no request is served
        pattern = re.sub(r"JOB_ID", "{job_id}", path)
        assert pattern in routes, f"{path} is not an API route"
        if "--data-binary" in words:
            assert (REPO / words[words.index("--data-binary") + 1].lstrip("@")).is_file()
        return "API route exists"
    if program == "cp":
        assert (REPO / words[1]).is_file()
        return "source exists"
    if program == "docker":
        assert words[1] == "compose" and (REPO / "docker-compose.yml").is_file()
        return "compose file exists (validated in tests/deploy)"
    if program == "kubectl":
        assert (REPO / words[words.index("-f") + 1]).exists()
        return "manifests exist (validated in tests/deploy)"
    raise AssertionError(f"documented command not covered by this test: {command}")


@pytest.mark.parametrize("command", [pytest.param(command, id=f"{document}: {command}")
                                     for document in DOCUMENTS for command in readme_commands(document)])
def test_readme_command(command):
    assert check(command)


def test_config_reference_is_generated():
    from services.config import config_reference

    config_md = (REPO / "docs" / "config.md").read_text()
    section = config_md.split("<!-- config-reference:start -->\n", 1)[1].split("\n<!-- config-reference:end -->", 1)[0]
    assert section.strip() == config_reference().strip(), "docs/config.md's config reference is stale: run " \
                                                          "`leapfrog config reference` and paste it"


def test_readme_screenshot_exists():
    assert (REPO / "docs" / "dashboard.png").stat().st_size > 10_000
