"""``./dev``, the README's entry point: its usage text is exactly the comment at its top."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_dev_without_a_command_prints_its_usage_and_nothing_else() -> None:
    result = subprocess.run(
        ["bash", str(ROOT / "dev")], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 2
    lines = result.stdout.splitlines()
    assert lines[0] == "mlflow-aws developer entry point."
    assert [line.split()[0] for line in lines if line.startswith("  ./dev")] == ["./dev"] * 3
    assert all(line.startswith(("mlflow-aws", "  ")) for line in lines), lines
    assert "set -" not in result.stdout and "#" not in result.stdout
