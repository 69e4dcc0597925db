"""Every shipped workflow config validates, with each of its profiles, before anything runs."""

from pathlib import Path

import pytest
import yaml

from pipeline.config import load_config
from pipeline.campaign import prepare_campaign

WORKFLOWS = sorted(Path(__file__).resolve().parents[1].joinpath("workflows").rglob("*.yaml"))


def profiles_of(path: Path) -> list[str | None]:
    return [None, *(yaml.safe_load(path.read_text()).get("profiles") or {})]


@pytest.mark.parametrize("path, profile", [(p, prof) for p in WORKFLOWS for prof in profiles_of(p)],
                         ids=lambda v: v.name if isinstance(v, Path) else str(v))
def test_workflow_config_is_valid(path, profile, tmp_path):
    config = load_config(path, profile=profile)
    campaign = prepare_campaign(config, tmp_path, resume=False)
    assert campaign.runs and not any(tmp_path.iterdir())  # validated, nothing written
