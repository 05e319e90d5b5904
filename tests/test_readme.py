"""The README's commands are the ones CI runs, and the CLI explains itself."""
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands():
    text = (ROOT / "README.md").read_text()
    install = re.search(r"<!-- install -->\s*```bash\n(.+?)\n```", text, re.S).group(1).strip()
    test = re.search(r"<!-- test -->\s*```bash\n(.+?)\n```", text, re.S).group(1).strip()
    return install, test


def test_ci_runs_exactly_the_readme_commands():
    install, test = _readme_commands()
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert install in ci, "the README install command must appear verbatim in .ci/run"
    assert test in ci, "the README test command must appear verbatim in .ci/run"
    assert ci.index(install) < ci.index(test)
    assert "pip install -q torch==2.13.0" in "\n".join(ci[: ci.index(install)])


def test_cli_help_lists_commands():
    out = subprocess.run([sys.executable, "-m", "brainrecon.cli", "--help"],
                         capture_output=True, text=True, check=True).stdout
    for cmd in ("toyworld", "card", "info", "backbones", "evaluate", "demo", "train"):
        assert cmd in out
    assert "never downloads" in out


def test_cli_card_lists_and_prints(capsys):
    from brainrecon.cli import main

    assert main(["card"]) == 0
    names = capsys.readouterr().out.split()
    assert "toyworld" in names and "nsd" in names
    assert main(["card", "nsd"]) == 0
    assert "Expected layout" in capsys.readouterr().out
    assert main(["card", "nope"]) == 2
    assert "available:" in capsys.readouterr().err


def test_data_exports_resolve():
    import brainrecon.data as data

    for name in data.__all__:
        assert getattr(data, name) is not None, name
    import pytest

    with pytest.raises(AttributeError):
        data.not_a_thing
