"""Every Python code block of README.md and docs/*.rst runs as shown.

Each block (joined with the blocks marked as continuing it) runs on its own
in a fresh interpreter, as root, with the repository and ``examples/`` on its
path; every one makes its own isolated host, as a reader's copy would. A
block marked ``not run, REASON`` is skipped with its reason; a whole example
file shown by a literalinclude is run by test_examples.py, which this checks.
What counts as a block, the markers and what is refused: tests/snippets.py.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.snippets import ROOT, Snippet, SnippetError, pages, snippets

RUN_BY_TEST_EXAMPLES = set(re.findall(r'run_example\("([^"]+)"\)', (Path(__file__).parent / "test_examples.py").read_text()))


def _cases() -> list[object]:
    cases: list[object] = []
    for page in pages():
        try:
            cases += [pytest.param(s, id=s.id) for s in snippets(page)]
        except SnippetError as exc:  # a test that fails, not a collection error
            cases.append(pytest.param(exc, id=str(page.relative_to(ROOT))))
    return cases


@pytest.mark.parametrize("snippet", _cases())
def test_the_block_runs_as_shown(snippet: Snippet | SnippetError, tmp_path: Path) -> None:
    if isinstance(snippet, SnippetError):
        pytest.fail(str(snippet), pytrace=False)
    if snippet.skip is not None:
        pytest.skip(f"{snippet.id}: {snippet.skip}")
    if snippet.include is not None:
        assert snippet.include.parent == ROOT / "examples" and snippet.include.name in RUN_BY_TEST_EXAMPLES, (
            f"{snippet.id}: shows {snippet.include}, which test_examples.py does not run"
        )
        return
    script = tmp_path / "snippet.py"
    script.write_text(snippet.source)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "examples")]))
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{snippet.id} failed as shown:\n{snippet.source}\n{done.stderr}"
