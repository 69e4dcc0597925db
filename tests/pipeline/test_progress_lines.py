"""One-line progress of batch jobs (pipeline.progress_lines): when lines come (a fake clock,
no waiting), what they say, the METADNS_PROGRESS_EVERY setting, and the two ways runs feed
them: the training loop of an inline run and the Ray driver's progress board snapshot."""

from __future__ import annotations

import pytest
import yaml

from pipeline.campaign import prepare_campaign
from pipeline.config import load_config
from pipeline.distributed.progress import ProgressBars
from pipeline.errors import ConfigError
from pipeline.progress_lines import ENV_VAR, ProgressLines, RunProgress, progress_every_s
from pipeline.runner import run_campaign
from tests.cli_runner import run_cli

TINY = {
    "name": "tiny",
    "seed": 3,
    "methods": ["mdns"],
    "system": {"name": "ising", "L": 4, "J": 1.0, "beta": 0.6},
    "sampler": {"denoiser": "lattice", "sites_per_step": 4, "hidden": 8, "layers": 1},
    "training": {"outer_iterations": 3, "batch_size": 16, "inner_steps": 1, "maskings": 2, "threads": 1},
    "sampling": {"n_samples": 50, "batch_size": 50},
}


class FakeClock:
    """Seconds that only move when the test says so."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def progress(iteration: int, total: int = 200, ess: float = 0.5, max_v: float = 3.0, elapsed: float = 0.0):
    return RunProgress(iteration, total, ess, max_v, elapsed)


def test_one_line_per_advanced_run_once_the_interval_has_passed():
    clock, printed = FakeClock(), []
    lines = ProgressLines(300, clock=clock, emit=printed.append)
    lines.update({"mdns_beta0.6000": progress(1)})
    clock.now += 299
    lines.update({"mdns_beta0.6000": progress(40)})
    assert printed == []  # the first lines come every_s after construction

    clock.now += 1
    lines.update({"mdns_beta0.6000": progress(41, ess=0.534, max_v=3.214, elapsed=4 * 60 + 51),
                  "mdns_beta0.8000": progress(7, total=50, ess=0.12, max_v=0.0, elapsed=3725)})
    assert printed == [
        "[progress] mdns_beta0.6000: outer iteration 41/200, ESS/n 0.53, max V 3.21 kT, elapsed 0:04:51",
        "[progress] mdns_beta0.8000: outer iteration 7/50, ESS/n 0.12, max V 0.00 kT, elapsed 1:02:05",
    ]

    clock.now += 100
    lines.update({"mdns_beta0.6000": progress(60)})
    assert len(printed) == 2  # not due again before another 300 s

    clock.now += 200
    lines.update({"mdns_beta0.6000": progress(41), "mdns_beta0.8000": progress(9, total=50)})
    assert printed[2:] == ["[progress] mdns_beta0.8000: outer iteration 9/50, ESS/n 0.50, max V 3.00 kT, "
                           "elapsed 0:00:00"]  # a run that did not advance since its last line is left out


def test_an_interval_of_zero_prints_nothing():
    clock, printed = FakeClock(), []
    lines = ProgressLines(0, clock=clock, emit=printed.append)
    for step in range(5):
        clock.now += 1e6
        lines.update({"run": progress(step)})
    assert printed == []


@pytest.mark.parametrize("value, seconds", [(None, 300.0), ("", 300.0), ("10", 600.0), ("0.5", 30.0), ("0", 0.0)])
def test_the_interval_comes_from_the_environment_in_minutes(value, seconds):
    environ = {} if value is None else {ENV_VAR: value}
    assert progress_every_s(environ) == seconds


@pytest.mark.parametrize("value", ["soon", "-1", "nan", "inf"])
def test_a_bad_interval_names_the_variable(value):
    with pytest.raises(ConfigError, match=ENV_VAR) as error:
        progress_every_s({ENV_VAR: value})
    assert repr(value) in str(error.value) and "minutes" in str(error.value)


def test_metadns_run_refuses_a_bad_interval_before_running(tmp_path, monkeypatch):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))
    monkeypatch.setenv(ENV_VAR, "five")
    code, _, stderr = run_cli("run", config, "--out", tmp_path / "runs", "--executor", "inline", "--quiet")
    assert code == 2 and ENV_VAR in stderr
    assert not (tmp_path / "runs").exists()


def test_an_inline_run_feeds_its_training_progress_to_the_lines(tmp_path):
    """Every outer iteration of a trained run reaches the printer (the clock moves an interval per
    look, so each look prints)."""
    clock, printed = FakeClock(), []

    def ticking() -> float:
        clock.now += 60
        return clock.now

    config_path = tmp_path / "tiny.yaml"
    config_path.write_text(yaml.safe_dump(TINY))
    campaign = prepare_campaign(load_config(config_path), tmp_path / "runs", resume=False)
    run_campaign(campaign, progress=False, lines=ProgressLines(60, clock=ticking, emit=printed.append))
    assert [line.split(",")[0] for line in printed] == [
        f"[progress] mdns_beta0.6000: outer iteration {i}/3" for i in (1, 2, 3)]
    assert all("ESS/n" in line and "max V" in line and "elapsed 0:00:" in line for line in printed)


def test_the_ray_driver_prints_lines_from_its_board_snapshot_without_bars():
    """The snapshot a ProgressBoard returns: run → (start, iteration, total, postfix, RunProgress)."""
    clock, printed = FakeClock(), []
    view = ProgressBars(enabled=False, lines=ProgressLines(300, clock=clock, emit=printed.append))
    snapshot = {"mdns_beta0.6000": (0, 12, 200, "loss=1", progress(12, ess=0.25, max_v=1.5, elapsed=61)),
                "sw_beta0.6000": (0, 0, 0, "", None)}  # started, no iteration yet
    view.update(snapshot)
    clock.now += 300
    view.update(snapshot)
    view.close()
    assert printed == ["[progress] mdns_beta0.6000: outer iteration 12/200, ESS/n 0.25, max V 1.50 kT, "
                       "elapsed 0:01:01"]
