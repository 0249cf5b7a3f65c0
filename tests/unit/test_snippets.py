"""The doc-snippet extractor (tests/snippets.py) finds every Python block and
refuses what cannot run as shown (no root: nothing is run here)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.snippets import SnippetError, pages, snippets


def page(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_blocks_markers_and_continuations_in_markdown(tmp_path: Path) -> None:
    md = page(
        tmp_path,
        "p.md",
        "```python\nwith open('x') as f:\n    pass\n```\n\n<!-- snippet: continued -->\n```python\n    f.read()\n```\n"
        "```sh\nls\n```\n<!-- snippet: not run, it needs the machine -->\n```py\nimport cnm\n```\n",
    )
    found = snippets(md)
    assert [(s.line, s.skip) for s in found] == [(2, None), (15, "it needs the machine")]
    assert found[0].source == "with open('x') as f:\n    pass\n    f.read()\n"  # joined, indentation kept


def test_blocks_and_markers_in_rst(tmp_path: Path) -> None:
    rst = page(
        tmp_path,
        "p.rst",
        "Text:\n\n.. code-block:: python\n   :caption: c\n\n   x = 1\n   y = x\n\n"
        ".. snippet: continued\n\n.. code-block:: python\n\n   print(y)\n\n"
        ".. code-block:: sh\n\n   ls\n\nIt prints::\n\n    pod: web 10.90.0.2\n",
    )
    assert [s.source for s in snippets(rst)] == ["x = 1\ny = x\nprint(y)\n"]


@pytest.mark.parametrize(
    "name, text, reason",
    [
        ("p.rst", "Run::\n\n    import cnm\n    cnm.gc()\n", "a '::' block of Python"),
        ("p.md", "```\nimport cnm\n```\n", "unmarked fence holding Python"),
        ("p.md", "<!-- snippet: continued -->\n```python\nx = 1\n```\n", "no code block comes before it"),
        ("p.md", "<!-- snippet: maybe -->\n```python\nx = 1\n```\n", "unknown marker"),
    ],
)
def test_what_cannot_run_as_shown_is_refused(tmp_path: Path, name: str, text: str, reason: str) -> None:
    with pytest.raises(SnippetError, match=reason):
        snippets(page(tmp_path, name, text))


def test_a_literalinclude_shows_a_whole_file(tmp_path: Path) -> None:
    page(tmp_path, "ex.py", '"""Doc."""\n\nimport os\n\n\ndef main():\n    print(os.sep)\n')
    whole = page(tmp_path, "a.rst", ".. literalinclude:: ex.py\n   :lines: 3-\n")
    assert snippets(whole)[0].include == tmp_path / "ex.py"
    for options, reason in ((":pyobject: main", "shows a part"), (":lines: 6-", "cutting code"), (":lines: 3-5", "to its end")):
        cut = page(tmp_path, "b.rst", f".. literalinclude:: ex.py\n   {options}\n")
        with pytest.raises(SnippetError, match=reason):
            snippets(cut)


def test_the_pages_hold_blocks() -> None:
    """The pages the integration test runs, seen here without root: every
    page parses, and their blocks are found (an extractor that found none
    would make that test pass on nothing)."""
    found = {p.name: snippets(p) for p in pages()}
    assert len(found["README.md"]) >= 2 and len(found["quickstart.rst"]) >= 4
