"""Run folders written before the restructuring (tests/fixtures/old_run_folders, made by commit
9f3468f) still resume and still report with today's code.

Resuming with a longer budget (``--resume --set training.outer_iterations=5``) must continue
the MetaDNS run from its old checkpoint (iterations 4 and 5 only, hills and energy evaluations
added to the old ones) and keep the finished Swendsen–Wang run untouched; ``metadns report``
must collect both runs.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd

from tests.cli_runner import run_cli

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "old_run_folders"


def copy_fixture(tmp_path: Path) -> Path:
    out = tmp_path / "runs"
    shutil.copytree(FIXTURES / "old_ising", out / "old_ising")
    return out


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def test_an_old_campaign_resumes_with_a_longer_budget(tmp_path):
    out = copy_fixture(tmp_path)
    campaign = out / "old_ising"
    old = summary(campaign / "metadns_beta0.6000")
    sw_files = {p.name: p.read_bytes() for p in (campaign / "sw_beta0.6000").iterdir() if p.is_file()}
    assert old["hills"] == 96 and len(old["fes_rmse_history"]) == 3  # 3 outer iterations of B = 32

    code, stdout, stderr = run_cli("run", FIXTURES / "old_ising.yaml", "--out", out, "--executor", "inline",
                                   "--quiet", "--resume", "--set", "training.outer_iterations=5")
    assert code == 0, stderr

    new = summary(campaign / "metadns_beta0.6000")
    assert new["hills"] == 5 * 32 and new["energy_evaluations"] > old["energy_evaluations"]
    history = new["fes_rmse_history"]
    assert [row[0] for row in history] == [32, 64, 96, 128, 160]
    assert history[:3] == old["fes_rmse_history"]  # continued from the checkpoint, not retrained
    samples = pd.read_parquet(campaign / "metadns_beta0.6000" / "samples.parquet")
    assert len(samples) == 256 and samples["log_q"].notna().all()
    assert {p.name: p.read_bytes() for p in (campaign / "sw_beta0.6000").iterdir() if p.is_file()} == sw_files


def test_an_old_campaign_reports(tmp_path):
    campaign = copy_fixture(tmp_path) / "old_ising"
    code, stdout, stderr = run_cli("report", campaign, "--quiet")
    assert code == 0, stderr
    table = pd.read_parquet(campaign / "summary.parquet")
    assert sorted(table["method"]) == ["metadns", "sw"]
    assert set(table["system"]) == {"ising"}
    assert (campaign / "dataset" / "observables").is_dir()
