"""The Ray executor gives the single-process results: trainer actors, evaluator pool, bias server.

Energies are deterministic and a run with one walker deposits through its bias server in the
inline order, so every estimate is bitwise equal to ``--executor inline`` with the same seed
(cost rows — wall times — aside).
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import ray
import torch

from pipeline import cli
from pipeline.bias import WellTemperedGridBias
from pipeline.config import config_from_dict, grid_points
from pipeline.distributed.bias_server import BiasClient
from pipeline.distributed.evaluators import EvaluatorPool
from pipeline.distributed.executor import run_campaign_on_ray, run_campaigns_on_ray, start_evaluator_pool
from pipeline.build import build_system
from pipeline.campaign import prepare_campaign
from pipeline.runner import run_campaign
from tests.same_results import assert_same_results

ISING = {
    "seed": 3, "methods": ["metadns", "mdns", "sw"],
    "system": {"name": "ising", "L": 4, "beta": [0.6]},
    "sampler": {"denoiser": "lattice", "sites_per_step": 4, "hidden": 8, "layers": 1},
    "bias": {"gamma": 10, "sigma": 0.1, "height_per_cycle": 0.5},
    "training": {"outer_iterations": 4, "batch_size": 16, "inner_steps": 2, "maskings": 2, "threads": 1},
    "sampling": {"n_samples": 300, "batch_size": 300},
    "reference": {"chains": 4, "sweeps": 60, "burn_in": 10},
    "distributed": {"evaluators": 2, "cpus_per_run": 0.5, "cpus_per_evaluator": 0.25},
}
ALLOY = {  # a grid of two Δμ points, each a temperature ladder warm-started from the hotter run
    "seed": 5, "methods": ["metadns", "mcmc-metad"],
    "system": {"name": "alloy", "size": [2, 2, 2], "cell": "primitive", "temperature": [1600.0, 800.0],
               "energy": {"name": "cluster_expansion", "model": "cuau_paper"}},
    "sampler": {"hidden": 8, "layers": 1, "sites_per_step": 2},
    "bias": {"gamma": 10, "sigma": 0.1, "height_per_cycle": 0.5},
    "training": {"outer_iterations": 4, "batch_size": 16, "inner_steps": 2, "maskings": 2, "threads": 1,
                 "initialise_from": "previous_temperature"},
    "sampling": {"n_samples": 300, "delta_mu_grid": [-0.05, 0.0]},
    "reference": {"chains": 4, "sweeps": 40, "burn_in": 10},
    "distributed": {"evaluators": 1, "cpus_per_run": 0.5},
    "grid": {"system.delta_mu": [-0.05, 0.05]},
}
WALKERS = {**ISING, "methods": ["metadns"], "training": {**ISING["training"], "walkers": 2},
           "distributed": {"evaluators": 1, "cpus_per_run": 0.5}}  # trainer + 2 walker actors + 1 evaluator
def inline_and_ray(raw: dict, name: str, tmp_path: Path, pool=None):
    config = config_from_dict(raw, name)
    inline = prepare_campaign(config, tmp_path / "inline", resume=False)
    run_campaign(inline, progress=False)
    distributed = prepare_campaign(config, tmp_path / "ray", resume=False)
    results = run_campaign_on_ray(distributed, progress=False, pool=pool)
    return inline, distributed, results


@pytest.mark.parametrize("raw,name", [(ISING, "ising4"), (ALLOY, "cuau8"), (WALKERS, "walkers")],
                         ids=["ising", "cu-au grid", "two walkers"])
def test_ray_campaign_equals_single_process_run(local_ray, tmp_path, raw, name):
    points = grid_points(config_from_dict(raw, name))
    inline = [prepare_campaign(config, tmp_path / "inline", False, tag) for tag, config in points]
    for campaign in inline:
        run_campaign(campaign, progress=False)
    distributed = [prepare_campaign(config, tmp_path / "ray", False, tag) for tag, config in points]
    results = run_campaigns_on_ray(distributed, progress=False)
    for a, b, result in zip(inline, distributed, results):
        assert [r.spec.run_name for r in result] == [s.run_name for s in b.runs]
        assert_same_results(a.root, b.root, [s.run_name for s in b.runs])
        for run in [s.run_name for s in b.runs if s.method == "metadns"]:
            # the bias server's final state is the run's bias
            saved = torch.load(b.root / run / "checkpoints" / "bias_server.pt", weights_only=False)
            trained = WellTemperedGridBias.from_state_dict(saved["bias"])
            assert trained.n_hills > 0
            written = (b.root / run / "HILLS").read_text()
            cv_names = written.split()[3:3 + trained.dim]     # "#! FIELDS time <cv...> ..."
            trained.write_hills(tmp_path / "HILLS.server", cv_names=cv_names)
            assert (tmp_path / "HILLS.server").read_bytes() == (b.root / run / "HILLS").read_bytes()
    if name == "walkers":   # each walker actor trained on the device Ray gave it (none here: CPU)
        summary = json.loads((distributed[0].root / distributed[0].runs[0].run_name / "summary.json").read_text())
        assert summary["walker_devices"] == ["cpu", "cpu"]
        assert summary["device"]["device_reason"].startswith("coordinator of 2 walker actors")
    if len(points) > 1:  # distinct points get distinct seeds, and the colder runs were warm-started
        seeds = {json.loads((c.root / "metadns_T800.0000" / "summary.json").read_text())["seed"] for c in distributed}
        assert len(seeds) == len(points)
        summary = json.loads((distributed[0].root / "metadns_T800.0000" / "summary.json").read_text())
        assert summary["initialised_from"] == "metadns_T1600.0000"


def test_killed_evaluator_is_restarted_and_the_run_completes_with_the_same_results(local_ray, tmp_path):
    raw = {**ISING, "methods": ["metadns"], "training": {**ISING["training"], "outer_iterations": 12},
           "distributed": {"evaluators": 1, "cpus_per_run": 0.5}}
    config = config_from_dict(raw, "killed")
    pool = start_evaluator_pool(prepare_campaign(config, tmp_path / "probe", resume=False))
    (evaluator,) = ray.get(pool.evaluators.remote())
    pid_before = ray.get(evaluator.pid.remote())
    run_dir = tmp_path / "ray" / "killed" / "metadns_beta0.6000"
    killed_mid_run = threading.Event()

    def kill_after_first_requests():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if ray.get(pool.stats.remote())["requests"] >= 2:
                killed_mid_run.set() if not (run_dir / "summary.json").exists() else None
                ray.kill(evaluator, no_restart=False)
                return
            time.sleep(0.01)

    killer = threading.Thread(target=kill_after_first_requests)
    killer.start()
    inline, distributed, _ = inline_and_ray(raw, "killed", tmp_path, pool=pool)
    killer.join()
    assert killed_mid_run.is_set()
    assert ray.get(evaluator.pid.remote()) != pid_before  # Ray restarted the actor
    assert_same_results(inline.root, distributed.root, ["metadns_beta0.6000"])


def test_pool_splits_large_requests_and_coalesces_concurrent_ones(local_ray):
    config = config_from_dict({**ISING, "system": {"name": "ising", "L": 4, "beta": 0.6}}, "pool")
    system = build_system(config)
    rng = np.random.default_rng(0)
    batches = [rng.integers(0, 2, size=(n, 16), dtype=np.int8) for n in (100, 7, 5, 9, 3)]
    expected = [system.energy(torch.from_numpy(b).long()).numpy() for b in batches]

    splitting = EvaluatorPool.remote(config.to_dict(), 2, 0.25, max_batch=4096, max_in_flight=1)
    assert np.array_equal(ray.get(splitting.energy.remote(batches[0])), expected[0])
    assert ray.get(splitting.stats.remote())["calls"] == 2  # 100 configurations over 2 evaluators

    # One evaluator, one call in flight: requests that queue meanwhile share the next call.
    serial = EvaluatorPool.remote(config.to_dict(), 1, 0.25, max_batch=4096, max_in_flight=1)
    results = ray.get([serial.energy.remote(b) for b in batches for _ in range(4)])
    for got, want in zip(results, [e for e in expected for _ in range(4)]):
        assert np.array_equal(got, want)
    stats = ray.get(serial.stats.remote())
    assert stats["requests"] == 20 and stats["coalesced_calls"] >= 1 and stats["calls"] < stats["requests"] + 4


def test_bias_client_deposits_like_a_local_bias_and_walkers_share_one_v(local_ray, tmp_path):
    def fresh():
        return WellTemperedGridBias(-1.0, 1.0, 33, 0.1, 10.0, 1.0, 0.05, cv_spacing=1.0 / 16)

    rng = np.random.default_rng(1)
    batches = [np.round(rng.uniform(-1, 1, size=(8, 1)) * 16) / 16 for _ in range(6)]
    local, client = fresh(), BiasClient.start(fresh())
    for batch in batches:
        assert np.array_equal(client.deposit(batch), local.deposit(batch))
    assert np.array_equal(client.values, local.values)
    assert client.state_dict() == local.state_dict()

    # Two walkers alternate deposits into one server: V equals the sequential local deposits.
    shared = fresh()
    walker_a = BiasClient.start(fresh())
    walker_b = BiasClient(walker_a.server, fresh(), walker=1)
    for i, batch in enumerate(batches):
        (walker_a if i % 2 == 0 else walker_b).deposit(batch)
        shared.deposit(batch)
    assert np.array_equal(walker_b.values, shared.values)
    assert ray.get(walker_a.server.hills_by_walker.remote()) == {0: 24, 1: 24}
    path = tmp_path / "bias.pt"
    version = walker_a.checkpoint(path)
    saved = torch.load(path, weights_only=False)
    assert version == saved["version"] == len(batches)
    assert np.array_equal(np.asarray(saved["bias"]["values"]), shared.values)


def test_more_cpus_than_the_cluster_has_is_a_config_error_and_writes_nothing(local_ray, tmp_path, capsys):
    import yaml

    config_path = tmp_path / "greedy.yaml"
    config_path.write_text(yaml.safe_dump({**ISING, "distributed": {"cpus_per_run": 64}}))
    out = tmp_path / "out"
    assert cli.main(["run", str(config_path), "--out", str(out), "--quiet"]) == 2
    assert "distributed.cpus_per_run" in capsys.readouterr().err
    assert not out.exists()


def test_address_with_inline_executor_is_rejected(tmp_path, capsys):
    assert cli.main(["run", "missing.yaml", "--executor", "inline", "--address", "127.0.0.1:1"]) == 2
    assert "--address" in capsys.readouterr().err
