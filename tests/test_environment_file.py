"""environment.yml agrees with pyproject.toml (cluster/check_environment.py; nothing is solved).

The checker runs on the real files, which must pass, and on broken copies in tmp_path, each of
which must fail with the package named in the message.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHECKER = ROOT / "cluster" / "check_environment.py"
ENV = (ROOT / "environment.yml").read_text()
PYPROJECT = (ROOT / "pyproject.toml").read_text()


def run_checker(env: str, pyproject: str, tmp_path: Path) -> subprocess.CompletedProcess:
    (tmp_path / "environment.yml").write_text(env)
    (tmp_path / "pyproject.toml").write_text(pyproject)
    return subprocess.run(
        [sys.executable, str(CHECKER), "--env", str(tmp_path / "environment.yml"),
         "--pyproject", str(tmp_path / "pyproject.toml")],
        capture_output=True, text=True, timeout=60, check=False)


def edit(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, old      # the real file still has the line this test breaks
    return text.replace(old, new)


def test_real_files_agree():
    proc = subprocess.run([sys.executable, str(CHECKER)], capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "agrees" in proc.stdout


@pytest.mark.parametrize("what, env, pyproject, needle", [
    ("no upper bound in environment.yml",
     ("  - scipy>=1.11,<2\n", "  - scipy>=1.11\n"), None, "scipy"),
    ("no upper bound in pyproject.toml (and so the ranges differ)",
     None, ('"tqdm>=4.66,<5",', '"tqdm>=4.66",'), "tqdm"),
    ("ranges disagree",
     ("  - ray[train,tune]>=2.52,<2.61\n", "  - ray[train,tune]>=2.50,<2.61\n"), None, "ray"),
    ("conda and PyPI names: pytorch is torch",
     None, ('"torch>=2.4,!=2.4.1,<3",', '"torch>=2.4,<3",'), "torch"),
    ("missing from environment.yml",
     ("  - trainstation>=1.0,<2\n", ""), None, "trainstation"),
    ("extras differ",
     ("  - ray[train,tune]>=2.52,<2.61\n", "  - ray[tune]>=2.52,<2.61\n"), None, "ray"),
    ("CPU-only pytorch",
     (" cuda*   #", " cpu*   #"), None, "torch"),
    ("pytorch without a build string",
     (" cuda*   #", "   #"), None, "torch"),
    ("no cuda-version",
     ("  - cuda-version=12.*\n", ""), None, "cuda-version"),
    ("python outside requires-python",
     ("  - python=3.11\n", "  - python=3.10\n"), None, "python"),
    ("YAML does not parse",
     ("dependencies:\n", "dependencies: [\n"), None, "environment.yml does not parse"),
])
def test_broken_copy_fails(tmp_path, what, env, pyproject, needle):
    proc = run_checker(edit(ENV, *env) if env else ENV,
                       edit(PYPROJECT, *pyproject) if pyproject else PYPROJECT, tmp_path)
    assert proc.returncode == 1, (what, proc.stdout, proc.stderr)
    lines = [line for line in proc.stderr.splitlines() if needle in line]
    assert lines, (what, proc.stderr)


def test_message_names_both_specs(tmp_path):
    proc = run_checker(edit(ENV, "  - numpy>=1.26,<3\n", "  - numpy>=1.26,<4\n"), PYPROJECT,
                       tmp_path)
    assert proc.returncode == 1
    line, = [line for line in proc.stderr.splitlines() if "numpy" in line]
    assert "<4" in line and "<3" in line and "environment.yml" in line and "pyproject.toml" in line
