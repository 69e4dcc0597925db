"""The device model (pipeline/devices.py) on a machine without a usable GPU: ``auto`` falls back
to the CPU and says so, a run that was given GPUs or asked for CUDA fails before it writes
anything, every run records its device, and validation never needs the run's device."""

from __future__ import annotations

import json

import pytest
import torch

from pipeline.build import build_system, check_buildable
from pipeline.campaign import prepare_campaign
from pipeline.config import ConfigError, config_from_dict
from pipeline.devices import choose_device, device_report, keep_freed_host_memory
from pipeline.outputs import read_parquet_metadata
from pipeline.runner import execute_run, run_campaign

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour where CUDA is not usable")

TINY = {
    "methods": ["metadns"], "seed": 3,
    "system": {"name": "ising", "L": 4, "beta": 0.3},
    "sampler": {"hidden": 8, "layers": 1, "sites_per_step": 4},
    "bias": {"gamma": 5, "sigma": 0.1},
    "training": {"outer_iterations": 2, "batch_size": 16, "inner_steps": 1, "maskings": 2},
    "sampling": {"n_samples": 64, "batch_size": 64, "metropolis_hastings": False},
}


def test_auto_without_cuda_trains_on_the_cpu_says_so_and_records_it(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("SLURM_GPUS_ON_NODE", raising=False)
    campaign = prepare_campaign(config_from_dict(TINY, "tiny"), tmp_path, resume=False)
    [result] = run_campaign(campaign, progress=False)
    assert "training.device: auto, but no CUDA device is visible" in capsys.readouterr().out
    device = result.summary["device"]
    assert device["device"] == "cpu" and "no CUDA device" in device["device_reason"]
    assert device["torch_build"] == torch.__version__ and device["cuda_available"] == "False"
    assert json.loads((result.run_dir / "summary.json").read_text())["device"] == device
    metadata = read_parquet_metadata(result.run_dir / "observables.parquet")
    assert metadata["device"] == "cpu" and metadata["torch_build"] == torch.__version__
    assert read_parquet_metadata(result.run_dir / "samples.parquet")["device_reason"] == device["device_reason"]


def test_cuda_requested_without_cuda_is_refused_naming_the_key():
    with pytest.raises(ConfigError, match="training.device") as error:
        choose_device("cuda")
    assert "not usable" in str(error.value)
    assert choose_device("cpu").device == torch.device("cpu")


def test_a_job_given_gpus_fails_before_writing_anything(tmp_path, monkeypatch):
    campaign = prepare_campaign(config_from_dict(TINY, "tiny"), tmp_path, resume=False)
    monkeypatch.setenv("SLURM_GPUS_ON_NODE", "4")
    with pytest.raises(ConfigError, match=r"training.device.*SLURM_GPUS_ON_NODE=4.*CUDA is not usable"):
        execute_run(campaign, campaign.runs[0], progress=False)
    assert not (campaign.root / campaign.runs[0].run_name).exists()
    # An explicit cpu request trains on the CPU whatever the job was given.
    assert choose_device("cpu").device.type == "cpu"
    monkeypatch.setenv("SLURM_GPUS_ON_NODE", "0")
    assert choose_device("auto").fell_back


def test_validation_builds_a_cuda_energy_backend_on_the_cpu():
    raw = {"methods": ["metadns"], "system": {"name": "alloy", "size": [2, 2, 2], "temperature": 600,
                                                "energy": {"name": "cluster_expansion", "model": "cuau_paper",
                                                           "device": "cuda"}}}
    config = config_from_dict(raw, "ce_cuda")
    system = check_buildable(config, check_device=False)
    assert system.n_sites == 8
    with pytest.raises(ConfigError, match="system.energy.device"):
        build_system(config)   # the run itself needs CUDA for this backend


def test_device_report_names_the_device_and_the_torch_build():
    report = device_report(choose_device("cpu"))
    assert report["device"] == "cpu" and report["torch_cuda"] == str(torch.version.cuda or "none")
    assert "gpu_name" not in report


def test_keep_freed_host_memory_is_accepted_by_glibc():
    assert keep_freed_host_memory() is True
