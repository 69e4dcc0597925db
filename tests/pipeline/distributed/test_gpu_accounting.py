"""GPU accounting of the Ray layer, on a Ray instance that declares two fake GPUs.

The checks run in a subprocess with its own Ray instance (``ray_session(num_gpus=2)``), so
the fake GPUs never reach the 2-CPU instance the other tests of this folder share.  This
machine has no CUDA, which is the point: an actor that asked for no GPU must see none and
train on the CPU; an actor that was given one must refuse to train on the CPU in its place.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pipeline.campaign import prepare_campaign
from pipeline.config import ConfigError, config_from_dict
from pipeline.distributed import executor

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="fake GPUs need a machine without CUDA")

REPO = Path(__file__).resolve().parents[3]

PROBE = r'''
import json, os
import ray
from pipeline.config import ConfigError
from pipeline.devices import choose_device
from pipeline.distributed.session import ray_session

@ray.remote
class Probe:
    def look(self):
        try:
            choice = choose_device("auto")
            device, reason = str(choice.device), choice.reason
        except ConfigError as error:
            device, reason = "refused", str(error)
        return {"visible": os.environ.get("CUDA_VISIBLE_DEVICES"), "gpu_ids": [str(i) for i in ray.get_gpu_ids()],
                "device": device, "reason": reason}

with ray_session(num_cpus=2, num_gpus=2):
    looks = {str(gpus): ray.get(Probe.options(num_cpus=0.1, num_gpus=gpus).remote().look.remote())
             for gpus in (0, 0.5, 1)}
    # What the executor asks this cluster for: W walkers → W GPUs, references none.
    import tempfile
    from pipeline.campaign import prepare_campaign
    from pipeline.config import config_from_dict
    from pipeline.distributed.executor import check_fits, run_resources
    requests = {}
    for walkers in (2, 3):
        raw = {"methods": ["sw", "metadns"], "system": {"name": "ising", "L": 4, "beta": 0.3},
               "training": {"walkers": walkers}, "distributed": {"cpus_per_run": 0.25}}
        campaign = prepare_campaign(config_from_dict(raw, "fake"), tempfile.mkdtemp(), resume=False, check_device=False)
        try:
            check_fits(campaign)
            fits = "fits"
        except ConfigError as error:
            fits = str(error)
        requests[str(walkers)] = {m: [run_resources(campaign, m).gpus, run_resources(campaign, m).walker_gpus,
                                      run_resources(campaign, m).total_gpus] for m in ("sw", "metadns")}
        requests[str(walkers)]["fits"] = fits
print("PROBE" + json.dumps({"looks": looks, "requests": requests}))
'''


def test_actors_see_exactly_the_gpus_ray_assigned_them_and_walkers_get_one_each():
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONPATH": str(REPO)}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, cwd=REPO,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    probe = json.loads(next(line for line in done.stdout.splitlines() if line.startswith("PROBE"))[5:])
    looks, requests = probe["looks"], probe["requests"]
    none, half, one = looks["0"], looks["0.5"], looks["1"]
    assert none["visible"] == "" and none["gpu_ids"] == []
    assert none["device"] == "cpu" and "Ray assigned this actor no GPU" in none["reason"]
    for given in (half, one):
        assert len(given["gpu_ids"]) == 1 and given["visible"] == given["gpu_ids"][0]
        assert given["device"] == "refused" and "CUDA is not usable" in given["reason"]
    # On the 2-GPU instance: the coordinator and SW get none, each of W walkers one.
    assert requests["2"]["sw"] == [0.0, 0.0, 0.0] and requests["2"]["metadns"] == [0.0, 1.0, 2.0]
    assert requests["2"]["fits"] == "fits"
    assert requests["3"]["metadns"] == [0.0, 1.0, 3.0] and "needs 3 GPU" in requests["3"]["fits"]


TWO_WALKERS = {
    "methods": ["sw", "metadns"], "seed": 1,
    "system": {"name": "ising", "L": 4, "beta": 0.3},
    "training": {"walkers": 2},
}


def campaign_for(raw, tmp_path):
    return prepare_campaign(config_from_dict(raw, "gpus"), tmp_path, resume=False, check_device=False)


def test_w_walkers_request_w_gpus_and_the_references_none(tmp_path, monkeypatch):
    monkeypatch.setattr(executor, "cluster_gpus", lambda: 2.0)
    monkeypatch.setattr(executor, "cluster_cpus", lambda: 8.0)
    campaign = campaign_for(TWO_WALKERS, tmp_path)
    reference, trained = executor.run_resources(campaign, "sw"), executor.run_resources(campaign, "metadns")
    assert (reference.cpus, reference.total_gpus) == (1.0, 0.0)
    assert trained.gpus == 0.0 and trained.walkers == 2 and trained.walker_gpus == 1.0 and trained.total_gpus == 2.0
    executor.check_fits(campaign)   # two walkers fit two GPUs (the coordinator needs none)
    three = campaign_for({**TWO_WALKERS, "training": {"walkers": 3}}, tmp_path / "three")
    with pytest.raises(ConfigError, match="distributed.gpus_per_run.*needs 3 GPU"):
        executor.check_fits(three)
    quarter = campaign_for({**TWO_WALKERS, "training": {"walkers": 3}, "distributed": {"gpus_per_run": 0.25}},
                           tmp_path / "quarter")
    assert executor.run_resources(quarter, "metadns").total_gpus == 0.75
    executor.check_fits(quarter)


def test_single_sampler_runs_get_one_gpu_and_cpu_runs_none(tmp_path, monkeypatch):
    monkeypatch.setattr(executor, "cluster_gpus", lambda: 1.0)
    monkeypatch.setattr(executor, "cluster_cpus", lambda: 2.0)
    one = campaign_for({**TWO_WALKERS, "training": {"walkers": 1}}, tmp_path)
    assert (executor.run_resources(one, "metadns").gpus, executor.run_resources(one, "metadns").walkers) == (1.0, 0)
    on_cpu = campaign_for({**TWO_WALKERS, "training": {"walkers": 1, "device": "cpu"}}, tmp_path / "cpu")
    assert executor.run_resources(on_cpu, "metadns").total_gpus == 0.0
    idle = campaign_for({**TWO_WALKERS, "training": {"device": "cpu"}, "distributed": {"gpus_per_run": 1}},
                        tmp_path / "idle")
    with pytest.raises(ConfigError, match="distributed.gpus_per_run.*training.device is cpu"):
        executor.run_resources(idle, "metadns")
    monkeypatch.setattr(executor, "cluster_gpus", lambda: 0.0)
    with pytest.raises(ConfigError, match="training.device is cuda but trained runs get no GPU"):
        executor.run_resources(campaign_for({**TWO_WALKERS, "training": {"device": "cuda"}}, tmp_path / "c"), "mdns")


def test_cuda_energies_need_gpus_for_their_evaluators(tmp_path, monkeypatch):
    monkeypatch.setattr(executor, "cluster_gpus", lambda: 1.0)
    monkeypatch.setattr(executor, "cluster_cpus", lambda: 4.0)
    alloy = {"methods": ["metropolis"], "system": {"name": "alloy", "size": [2, 2, 2], "temperature": 600,
                                                     "energy": {"name": "cluster_expansion", "model": "cuau_paper",
                                                                "device": "cuda"}}}
    with pytest.raises(ConfigError, match="distributed.gpus_per_evaluator"):
        executor.pool_resources(campaign_for({**alloy, "distributed": {"evaluators": 2}}, tmp_path))
    pooled = campaign_for({**alloy, "distributed": {"evaluators": 2, "gpus_per_evaluator": 0.5}}, tmp_path / "p")
    assert executor.pool_resources(pooled) == (0.5, 1.0)
    assert executor.run_resources(pooled, "metropolis").total_gpus == 0.0
    in_process = campaign_for(alloy, tmp_path / "in_process")
    assert executor.run_resources(in_process, "metropolis").gpus == 1.0   # its energies run on CUDA here
