"""``metadns`` starts without torch, ray or icet for what does not run anything: ``--help``
(of every command), ``--version`` and ``run --dry-run``.

Each case runs ``pipeline.cli.main`` in a fresh interpreter and reports which heavy packages
ended up in ``sys.modules``.
"""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = REPO / "workflows" / "quickstart.yaml"
HEAVY = ("torch", "ray", "icet")
PROBE = f"""
import sys
from pipeline.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as exit_:
    code = exit_.code
heavy = sorted({{name.split(".")[0] for name in sys.modules}} & set({HEAVY!r}))
print("heavy modules:", heavy, file=sys.stderr)
sys.exit(code)
"""
NO_HEAVY = "heavy modules: []"


def metadns(*args) -> subprocess.CompletedProcess:
    """``metadns ARGS`` in a fresh interpreter; stderr ends with the heavy modules it imported."""
    return subprocess.run([sys.executable, "-c", PROBE, *map(str, args)], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=120)


def test_help_lists_the_commands_without_heavy_imports():
    result = metadns("--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: metadns")
    for command in ("run", "energy", "fit-ce", "submit", "tune", "report"):
        assert command in result.stdout
    assert NO_HEAVY in result.stderr


@pytest.mark.parametrize("command", ["run", "energy", "fit-ce", "submit", "tune", "report"])
def test_command_help_without_heavy_imports(command):
    result = metadns(command, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: metadns {command}")
    assert NO_HEAVY in result.stderr


def test_run_help_offers_dry_run():
    assert "--dry-run" in metadns("run", "--help").stdout


def test_version_prints_the_installed_version_without_heavy_imports():
    result = metadns("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"metadns {importlib.metadata.version('metadns')}\n"
    assert NO_HEAVY in result.stderr


def test_dry_run_prints_one_line_per_run_folder_and_writes_nothing(tmp_path):
    out = tmp_path / "out"
    result = metadns("run", QUICKSTART, "--dry-run", "--out", out)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [str(out / "quickstart" / run)
                                          for run in ("sw_beta0.6000", "mdns_beta0.6000", "metadns_beta0.6000")]
    assert NO_HEAVY in result.stderr
    assert not out.exists()


def test_dry_run_of_a_grid_names_each_point_folder(tmp_path):
    config = {"methods": ["sw", "metadns"], "system": {"name": "ising", "L": 4, "temperature": [2.0, 3.0]},
              "grid": {"bias.sigma": [0.1, 0.2]}}
    path = tmp_path / "ladder.yaml"
    path.write_text(yaml.safe_dump(config))
    out = tmp_path / "out"
    result = metadns("run", path, "--dry-run", "--out", out)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [str(out / "ladder" / f"sigma={sigma}" / f"{method}_{tag}")
                                          for sigma in ("0.1", "0.2") for method in ("sw", "metadns")
                                          for tag in ("T2.0000", "T3.0000")]
    assert not out.exists()


def test_dry_run_of_an_invalid_config_exits_2_without_heavy_imports(tmp_path):
    out = tmp_path / "out"
    result = metadns("run", QUICKSTART, "--dry-run", "--out", out, "--set", "bias.gama=5")
    assert result.returncode == 2
    assert "metadns: error: bias.gama:" in result.stderr and "Did you mean 'gamma'?" in result.stderr
    assert "Traceback" not in result.stderr
    assert NO_HEAVY in result.stderr
    assert not out.exists()


def test_config_module_imports_no_heavy_package():
    probe = f"import sys, pipeline.config; print(sorted({{n.split('.')[0] for n in sys.modules}} & set({HEAVY!r})))"
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
