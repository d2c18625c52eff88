"""Every ```python block of README.md and docs/*.md runs, offline, on the CPU.

Blocks of one file share a namespace and run in order, in a temporary working directory, so a
page reads as one script. The only blocks not run are those right after the comment
``<!-- not run: downloads a checkpoint -->``: each is the ``from_pretrained`` twin of a block
that runs on a ``leanvision.testing`` tiny model, and must say ``from_pretrained``.
"""

from __future__ import annotations

import dataclasses
import re
import sys
import time
import traceback
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
NOT_RUN = "<!-- not run: downloads a checkpoint -->"
FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([\w+-]*)")


@dataclasses.dataclass
class Block:
    language: str
    line: int  # 1-based line of the first code line
    code: str
    not_run: bool


def code_blocks(text: str) -> list[Block]:
    """Fenced blocks of a markdown text, with the marker comment noted.

    >>> blocks = code_blocks("a\\n<!-- not run: downloads a checkpoint -->\\n```python\\nx = 1\\n```\\n")
    >>> [(b.language, b.line, b.code, b.not_run) for b in blocks]
    [('python', 4, 'x = 1\\n', True)]
    """
    lines = text.splitlines()
    blocks: list[Block] = []
    index = 0
    while index < len(lines):
        match = FENCE.match(lines[index])
        if not match:
            index += 1
            continue
        fence, language = match.group(2), match.group(3).lower()
        previous = next((ln.strip() for ln in reversed(lines[:index]) if ln.strip()), "")
        end = index + 1
        while end < len(lines) and not lines[end].strip().startswith(fence):
            end += 1
        code = "".join(line + "\n" for line in lines[index + 1 : end])
        blocks.append(Block(language, index + 2, code, previous == NOT_RUN))
        index = end + 1
    return blocks


def page_id(page: Path) -> str:
    return str(page.relative_to(ROOT))


def test_there_are_pages_with_snippets():
    assert (ROOT / "docs").is_dir()
    counts = {page_id(p): len(code_blocks(p.read_text())) for p in PAGES}
    assert counts["README.md"] > 0
    assert len(PAGES) >= 8, counts


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_not_run_marker_only_on_from_pretrained_twins(page):
    text = page.read_text()
    blocks = code_blocks(text)
    marked = [b for b in blocks if b.not_run]
    assert text.count(NOT_RUN) == len(marked), (
        f"{page_id(page)}: every {NOT_RUN!r} must sit right before a fenced block"
    )
    for block in marked:
        assert block.language == "python", (
            f"{page_id(page)}:{block.line}: marker on a non-python block"
        )
        assert "from_pretrained" in block.code, (
            f"{page_id(page)}:{block.line}: a block that is not run must be the from_pretrained "
            "twin of a runnable one; run everything else on leanvision.testing models"
        )


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_python_snippets_run(page, tmp_path, monkeypatch):
    blocks = [b for b in code_blocks(page.read_text()) if b.language == "python"]
    monkeypatch.chdir(tmp_path)
    # A module of its own, as a script run with `python` would have (dataclasses look it up).
    module = types.ModuleType("__snippet__")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    namespace = module.__dict__
    timings = []
    for number, block in enumerate(blocks, 1):
        if block.not_run:
            continue
        # Pad with blank lines so tracebacks give the markdown file's own line numbers.
        source = "\n" * (block.line - 1) + block.code
        start = time.perf_counter()
        try:
            # dont_inherit: this file's `from __future__ import annotations` must not leak in
            exec(compile(source, str(page), "exec", dont_inherit=True), namespace)
        except Exception:
            pytest.fail(
                f"{page_id(page)} block {number} (line {block.line}) raised:\n"
                f"{traceback.format_exc()}",
                pytrace=False,
            )
        timings.append((round(time.perf_counter() - start, 2), block.line))
    print(page_id(page), "seconds per block (time, line):", timings)
