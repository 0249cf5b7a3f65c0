"""The Python code blocks of README.md and docs/*.rst, found and put together
the way tests/integration/test_doc_snippets.py runs them.

What counts as a Python block:

- in Markdown, a fence marked ``python`` or ``py``;
- in reStructuredText, a ``.. code-block:: python`` (or ``code``,
  ``sourcecode``; ``py``, ``python3``), and a ``.. literalinclude::`` of a
  ``.py`` file or with ``:language: python``. A ``::`` literal block whose text
  parses as Python is refused (:class:`SnippetError`): a Python block says
  that it is one, so that a block of output or of shell is never mistaken for
  code, and so that it can carry a marker.

Each block runs as shown, on its own, in a fresh interpreter. Two markers,
on the line just before the block (before its directive or fence), say
otherwise, visibly in the page's source:

``.. snippet: continued`` (Markdown: ``<!-- snippet: continued -->``)
    the block continues the previous Python block of the page (say, the body
    of its ``with``): it runs joined to it, as one script. The page's text
    says so to the reader too.
``.. snippet: not run, REASON`` (Markdown: ``<!-- snippet: not run, REASON -->``)
    the block must not run in a test (it acts on the machine's own network
    namespace, which the suite never touches); the test is skipped with the
    reason.

A literalinclude must show a whole example file (its module docstring may be
left out: it is no code), one that tests/integration/test_examples.py runs;
a part of a file (``:pyobject:``, a ``:lines:`` range that cuts code) does
not run when copied, and is refused.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import attrs

ROOT = Path(__file__).resolve().parents[1]

PYTHON = {"python", "py", "python3"}
_DIRECTIVE = re.compile(r"^(?P<indent>\s*)\.\. (?P<name>code-block|code|sourcecode|literalinclude)::\s*(?P<arg>\S*)\s*$")
_RST_MARKER = re.compile(r"^\s*\.\. snippet: (?P<what>.*?)\s*$")
_MD_MARKER = re.compile(r"^\s*<!-- snippet: (?P<what>.*?) -->\s*$")
_FENCE = re.compile(r"^(?P<indent>\s*)```\s*(?P<language>[\w+-]*)\s*$")


class SnippetError(Exception):
    """A page holds a Python block that can neither run nor is marked."""


@attrs.frozen
class Block:
    page: str  # relative to the repository root
    line: int  # where the block's text starts, 1-based
    source: str  # the text as shown, dedented
    marker: str | None  # "continued", "not run, ...", or None
    include: Path | None = None  # the example file a literalinclude shows


@attrs.frozen
class Snippet:
    """What one subprocess runs: a block and the blocks that continue it."""

    page: str
    line: int
    source: str
    skip: str | None  # the reason it must not run
    include: Path | None  # an example shown whole: test_examples runs it

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"


def _name(page: Path) -> str:
    return str(page.relative_to(ROOT)) if page.is_relative_to(ROOT) else str(page)


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _dedent(lines: list[str]) -> str:
    width = min((_indent(line) for line in lines if line.strip()), default=0)
    return "\n".join(line[width:] for line in lines).strip("\n") + "\n"


def _parses(text: str) -> bool:
    try:
        ast.parse(text)
    except SyntaxError:
        return False
    return True


def _marker(lines: list[str], index: int, pattern: re.Pattern[str]) -> str | None:
    """The marker on the nearest non-blank line before *index*, if it is one."""
    for line in reversed(lines[:index]):
        if line.strip():
            found = pattern.match(line)
            return found.group("what") if found else None
    return None


def _body(lines: list[str], start: int, indent: int) -> tuple[dict[str, str], list[str], int]:
    """The options and content of the directive on line *start* (indented by
    *indent*); returns them and the index of the first line after it."""
    options: dict[str, str] = {}
    i = start + 1
    while i < len(lines) and lines[i].strip().startswith(":") and _indent(lines[i]) > indent:
        name, _, value = lines[i].strip()[1:].partition(":")
        options[name] = value.strip()
        i += 1
    content: list[str] = []
    while i < len(lines) and (not lines[i].strip() or _indent(lines[i]) > indent):
        content.append(lines[i])
        i += 1
    while content and not content[-1].strip():
        content.pop()
    return options, content, i


def _included(page: Path, target: str, options: dict[str, str], where: str) -> tuple[str, Path]:
    """The text a literalinclude shows, refused unless it is a whole example file."""
    path = (page.parent / target).resolve()
    if "pyobject" in options or set(options) - {"language", "lines", "caption", "linenos"}:
        raise SnippetError(f"{where}: shows a part of {target} ({sorted(options)}); show the whole file")
    text = path.read_text()
    lines = text.splitlines()
    first = 1
    if "lines" in options:
        found = re.fullmatch(r"(\d+)-", options["lines"])
        if not found:
            raise SnippetError(f"{where}: lines {options['lines']!r} of {target}; show the file from a line to its end")
        first = int(found.group(1))
    shown = "\n".join(lines[first - 1 :])
    tree = ast.parse(text)
    docstring = tree.body[0] if tree.body and isinstance(tree.body[0], ast.Expr) else None
    code = "\n".join(lines[docstring.end_lineno :] if docstring and docstring.end_lineno else lines)
    if shown.strip() != code.strip():
        raise SnippetError(f"{where}: shows {target} from line {first}, cutting code; show it from its first import")
    return shown, path


def rst_blocks(page: Path) -> list[Block]:
    name = _name(page)
    lines = page.read_text().splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        directive = _DIRECTIVE.match(line)
        if directive:
            indent = _indent(line)
            options, content, after = _body(lines, i, indent)
            marker = _marker(lines, i, _RST_MARKER)
            where = f"{name}:{i + 1}"
            if directive.group("name") == "literalinclude":
                target = directive.group("arg")
                if target.endswith(".py") or options.get("language") in PYTHON:
                    source, path = _included(page, target, options, where)
                    blocks.append(Block(name, i + 1, source, marker, path))
            elif directive.group("arg") in PYTHON:
                blocks.append(Block(name, i + 2 + len(options), _dedent(content), marker))
            i = after
            continue
        if line.rstrip().endswith("::") and not line.lstrip().startswith(".."):
            _, content, after = _body(lines, i, _indent(line))
            text = _dedent(content)
            if content and _parses(text):
                raise SnippetError(
                    f"{name}:{i + 1}: a '::' block of Python; make it a '.. code-block:: python' "
                    "(or another language, if it is not code)"
                )
            i = after
            continue
        i += 1
    return blocks


def markdown_blocks(page: Path) -> list[Block]:
    name = _name(page)
    lines = page.read_text().splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        fence = _FENCE.match(lines[i])
        if not fence:
            i += 1
            continue
        end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == "```"), len(lines))
        language = fence.group("language")
        # Only the fence's own indentation goes: a block continuing the body
        # of the previous one's ``with`` keeps its indentation, as shown.
        width = len(fence.group("indent"))
        text = "\n".join(line[width:] for line in lines[i + 1 : end]).strip("\n") + "\n"
        if language in PYTHON:
            blocks.append(Block(name, i + 2, text, _marker(lines, i, _MD_MARKER)))
        elif not language and _parses(text):
            raise SnippetError(f"{name}:{i + 1}: an unmarked fence holding Python; write ```python")
        i = end + 1
    return blocks


def pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.rst"))]


def blocks(page: Path) -> list[Block]:
    return markdown_blocks(page) if page.suffix == ".md" else rst_blocks(page)


def snippets(page: Path) -> list[Snippet]:
    """The page's Python blocks, continuations joined to the block they continue."""
    out: list[Snippet] = []
    for block in blocks(page):
        where = f"{block.page}:{block.line}"
        if block.marker == "continued":
            if not out or out[-1].include is not None:
                raise SnippetError(f"{where}: marked continued, but no code block comes before it")
            last = out[-1]
            out[-1] = attrs.evolve(last, source=last.source + block.source)
        elif block.marker is None or block.marker.startswith("not run, "):
            skip = block.marker[len("not run, ") :] if block.marker else None
            out.append(Snippet(block.page, block.line, block.source, skip, block.include))
        else:
            raise SnippetError(f"{where}: unknown marker {block.marker!r} (continued, or not run, REASON)")
    return out
