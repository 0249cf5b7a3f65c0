"""``-m kernel`` selects exactly the integration tests (no root needed: it only collects)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def collected(*args: str) -> set[str]:
    """The test ids ``pytest --collect-only`` lists for *args*, from the repository root."""
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *args, "tests"],
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode in (0, 5), done.stdout + done.stderr  # 5: nothing selected
    return {line for line in done.stdout.splitlines() if "::" in line}


def test_the_kernel_mark_selects_every_integration_test_and_nothing_else() -> None:
    everything = collected()
    integration = {test for test in everything if test.startswith("tests/integration/")}
    assert len(integration) > 100 and len(everything) > len(integration)  # both kinds were collected
    assert collected("-m", "kernel") == integration
