"""Every reference a reader of the project can follow leads somewhere: repository paths named in code, comments,
the README and the docs exist, every `docs/<file>.md#anchor` and every markdown link lands on a file and a heading
that exist, and no file cites design notes that are not part of the repository.

The repository is found from this file's location, so the test gives the same answer from any working directory.
"""

from __future__ import annotations

import os
import re
from functools import cache
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# Paths are recognised only when they start with one of the project's top-level directories (and are not the tail of
# a longer path such as /tmp/learner/x or .venv/lib/.../trainer/x): few false positives, and no known path slips by.
TOP_DIRS = ("common", "rollout", "learner", "extrapolate", "services", "bench", "deploy", "tests", "docs",
            "requirements")
PATH_RE = re.compile(r"(?<![\w./~-])((?:" + "|".join(TOP_DIRS) + r")/[\w./-]*[\w/])")
DOC_ANCHOR_RE = re.compile(r"(?<![\w./~-])(docs/[\w./-]+\.md)#([\w-]+)")
MD_LINK_RE = re.compile(r"!?\[[^\]\n]*\]\(([^)\s]+)\)")

# Paths that are named on purpose but exist only at run time, each with the reason.
RUNTIME_PATHS = {
    "deploy/leapfrog.env": "the operator's secrets file, copied from deploy/leapfrog.env.example and git-ignored",
    "requirements/lock.new": "`make lock`'s temporary output, renamed over requirements/lock.txt",
}

# Design notes that were never part of the repository; the names are assembled so this file does not cite them.
ABSENT_NOTES = tuple(name + ".md" for name in ("METHODS", "DESIGN", "FINDINGS", "ST" + "ACK"))
ABSENT_PHRASE_RE = re.compile(r"\b" + "ST" + r"ACK\b")  # "... facts in the README" and the like

SKIP_DIRS = {"__pycache__", "runs", "build", "node_modules"}


def project_files() -> list[Path]:
    """Every text file of the project: code, tests, docs, deploy files, bench, top-level files (hidden entries,
    virtual environments, caches and run outputs excluded)."""
    out = []
    for root, dirs, files in os.walk(REPO):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in SKIP_DIRS
                         and not d.endswith(".egg-info") and not (Path(root) / d / "pyvenv.cfg").exists())
        for name in sorted(files):
            path = Path(root) / name
            if not name.startswith(".") and read_text(path) is not None:
                out.append(path)
    return out


@cache
def read_text(path: Path) -> str | None:
    """The file's text, or None for a binary file (an image, a model)."""
    data = path.read_bytes()
    if b"\0" in data[:8192]:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@cache
def anchors(md_file: Path) -> frozenset[str]:
    """The anchors of a markdown file's headings (outside code fences), with GitHub's -1, -2 for repeats."""
    seen: dict[str, int] = {}
    out = set()
    fenced = False
    for line in md_file.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
            continue
        match = re.match(r"^#{1,6}\s+(.+?)\s*#*\s*$", line)
        if fenced or not match:
            continue
        slug = github_slug(match.group(1))
        out.add(f"{slug}-{seen[slug]}" if slug in seen else slug)
        seen[slug] = seen.get(slug, 0) + 1
    return frozenset(out)


def where(path: Path, text: str, pos: int) -> str:
    return f"{path.relative_to(REPO)}:{text.count(chr(10), 0, pos) + 1}"


def test_no_file_cites_design_notes_missing_from_the_repository():
    files = project_files()
    assert len(files) > 50, f"only {len(files)} project files found under {REPO}: the scan is looking in the wrong place"
    hits = []
    for path in files:
        text = read_text(path)
        for name in ABSENT_NOTES:
            hits += [f"{where(path, text, m.start())}: {name}" for m in re.finditer(re.escape(name), text)]
        hits += [f"{where(path, text, m.start())}: {m.group(0)}" for m in ABSENT_PHRASE_RE.finditer(text)]
    assert not hits, ("these cite design notes that are not in the repository; cite the matching section of "
                      "docs/methods.md or docs/architecture.md instead, or drop the citation:\n" + "\n".join(hits))


def test_every_repository_path_named_in_the_project_exists():
    checked, missing = 0, []
    for path in project_files():
        text = read_text(path)
        for m in PATH_RE.finditer(text):
            ref = m.group(1)
            checked += 1
            if ref not in RUNTIME_PATHS and not (REPO / ref).exists():
                missing.append(f"{where(path, text, m.start())}: {ref}")
    assert checked > 100, f"only {checked} path references found: the pattern or the file scan is broken"
    assert not missing, ("these name repository paths that do not exist; fix the path, or add a runtime-only path "
                         "to RUNTIME_PATHS with the reason:\n" + "\n".join(missing))


def test_every_docs_anchor_names_a_heading_of_that_file():
    checked, broken = 0, []
    for path in project_files():
        text = read_text(path)
        for m in DOC_ANCHOR_RE.finditer(text):
            target, anchor = REPO / m.group(1), m.group(2)
            checked += 1
            if not target.is_file():
                broken.append(f"{where(path, text, m.start())}: {m.group(1)} does not exist")
            elif anchor not in anchors(target):
                broken.append(f"{where(path, text, m.start())}: {m.group(1)} has no heading #{anchor} "
                              f"(headings: {', '.join(sorted(anchors(target)))})")
    assert checked > 20, f"only {checked} docs anchors found: the pattern or the file scan is broken"
    assert not broken, "these cite sections that do not exist:\n" + "\n".join(broken)


def test_every_markdown_link_lands_on_a_file_and_heading():
    # the anchor rule the checks rely on gives GitHub's anchors
    assert github_slug("Clipped surrogate and clip-higher") == "clipped-surrogate-and-clip-higher"
    assert github_slug("pass@k") == "passk"
    assert github_slug("`learner.loss_type`: GRPO, DAPO") == "learnerloss_type-grpo-dapo"
    checked, broken = 0, []
    for path in project_files():
        if path.suffix != ".md":
            continue
        text = read_text(path)
        for m in MD_LINK_RE.finditer(text):
            link = m.group(1)
            if re.match(r"^[a-z][a-z0-9+.-]*:", link):  # http:, https:, mailto: ...
                continue
            file_part, _, anchor = link.partition("#")
            target = (path.parent / file_part).resolve() if file_part else path
            checked += 1
            if not target.exists():
                broken.append(f"{where(path, text, m.start())}: {link} (no file {file_part})")
            elif anchor and target.suffix == ".md" and anchor not in anchors(target):
                broken.append(f"{where(path, text, m.start())}: {link} (no heading #{anchor} in {target.name})")
    assert checked > 10, f"only {checked} relative markdown links found: the pattern or the file scan is broken"
    assert not broken, "these markdown links lead nowhere:\n" + "\n".join(broken)

