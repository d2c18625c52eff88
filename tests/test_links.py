"""Everything README.md and docs/*.md point to exists in the repository.

Checked: every relative markdown link (and its ``#anchor``, against the target page's
headings), and every inline code span that looks like a repository path: it contains ``/``,
has no spaces or placeholders, and ends in a known file extension or in ``/`` (a folder).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [
    ROOT / "README.md",
    ROOT / "benchmarks" / "README.md",
    *sorted((ROOT / "docs").glob("*.md")),
]
EXTENSIONS = (
    ".py", ".md", ".txt", ".json", ".sh", ".toml", ".yaml", ".yml", ".cfg",
    ".png", ".jpg", ".mp4", ".ipynb",
)  # fmt: skip
# Paths the docs name that a run creates (not committed): outputs, venvs, carried wheels.
CREATED = ("bench-results/", ".venv", ".whl/")
PLACEHOLDER = re.compile(r"[<>*{}$ ]|\.\.\.")
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)|!\[[^\]]*\]\(([^)\s]+)\)")
CODE_SPAN = re.compile(r"(?<!`)`([^`\n]+)`(?!`)")
FENCE = re.compile(r"^\s*(`{3,}|~{3,})")


def prose(text: str) -> str:
    """``text`` with fenced code blocks blanked (links and spans there are code, not prose)."""
    out, fence = [], None
    for line in text.splitlines():
        match = FENCE.match(line)
        if fence is None and match:
            fence = match.group(1)
            out.append("")
        elif fence is not None:
            if line.strip().startswith(fence):
                fence = None
            out.append("")
        else:
            out.append(line)
    return "\n".join(out)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading.

    >>> slug("Full-size shapes on a CPU, with `stats`!")
    'full-size-shapes-on-a-cpu-with-stats'
    """
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    found: set[str] = set()
    for line in prose(page.read_text()).splitlines():
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if match:
            base = slug(match.group(1))
            name, n = base, 1
            while name in found:
                name, n = f"{base}-{n}", n + 1
            found.add(name)
    return found


def page_id(page: Path) -> str:
    return str(page.relative_to(ROOT))


def looks_like_repo_path(span: str) -> bool:
    """``leanvision/core/handle.py`` and ``benchmarks/results/`` yes; ``lv.vlm.compress(...)``,
    ``1/8``, ``/models/x.json``, ``benchmarks/results/<device>/`` no."""
    if "/" not in span or PLACEHOLDER.search(span) or "://" in span or span.startswith("/"):
        return False
    if span.startswith(CREATED):
        return False
    return span.endswith("/") or span.lower().endswith(EXTENSIONS)


def test_every_docs_page_is_linked_from_the_readme():
    readme = (ROOT / "README.md").read_text()
    targets = {m.group(1) or m.group(2) for m in LINK.finditer(prose(readme))}
    linked = {t.split("#")[0] for t in targets}
    missing = [page_id(p) for p in sorted((ROOT / "docs").glob("*.md")) if page_id(p) not in linked]
    assert not missing, f"docs pages the README does not link to: {missing}"


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_relative_links_exist(page):
    broken = []
    for match in LINK.finditer(prose(page.read_text())):
        target = match.group(1) or match.group(2)
        if re.match(r"^[a-z]+:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target} (no such file)")
        elif not file.resolve().is_relative_to(ROOT):
            broken.append(f"{target} (outside the repository)")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{target} (no heading #{anchor} in {page_id(file)})")
    assert not broken, f"{page_id(page)}: broken links {broken}"


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_repo_paths_in_code_spans_exist(page):
    spans = {m.group(1).strip() for m in CODE_SPAN.finditer(prose(page.read_text()))}
    paths = sorted(s for s in spans if looks_like_repo_path(s))
    missing = [p for p in paths if not (ROOT / p).exists()]
    assert not missing, f"{page_id(page)} names paths that are not in the repository: {missing}"


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_no_pointer_to_files_users_do_not_have(page):
    text = page.read_text()
    assert "DESIGN.md" not in text and "shared folder" not in text, (
        f"{page_id(page)} points to the project's private design notes"
    )


def test_path_filter_catches_typos():
    # the oracle for the filter: a misspelled repository path is checked, and would fail
    assert looks_like_repo_path("benchmark/results/vlm-cpu.txt")
    assert not (ROOT / "benchmark/results/vlm-cpu.txt").exists()
    assert looks_like_repo_path("leanvision/kernels/ops/")
    assert not looks_like_repo_path("benchmarks/results/<device>.json")
    assert not looks_like_repo_path("lv.vlm.compress(model, 'fastv')")
