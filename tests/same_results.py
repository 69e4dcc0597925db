"""Comparing the outputs of two executions of the same runs (e.g. inline and on Ray)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

COMPARED_FILES = ("observables", "fes", "histograms", "samples")


def assert_same_results(inline_root: Path, ray_root: Path, run_names) -> None:
    """Each run's observables, FES, histograms and samples are bitwise equal in both folders
    (wall-time observables aside)."""
    for run in run_names:
        for name in COMPARED_FILES:
            a = pd.read_parquet(inline_root / run / f"{name}.parquet")
            b = pd.read_parquet(ray_root / run / f"{name}.parquet")
            if name == "observables":  # wall times differ; energy evaluations etc. must not
                a = a[~a.observable.str.endswith("wall_time")].reset_index(drop=True)
                b = b[~b.observable.str.endswith("wall_time")].reset_index(drop=True)
            pd.testing.assert_frame_equal(a, b, check_exact=True, obj=f"{run}/{name}")
