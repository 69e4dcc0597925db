"""``metadns export RUN_DIR``: an alloy run's sampled configurations as atomic structures.

The run folder's ``config.yaml`` rebuilds the system through the composition root
(:func:`pipeline.build.build_system`); ``samples.parquet`` gives the configurations, their
energies, CVs and log-weights.  N of them are selected (:func:`selected_rows`) and written as
ASE structures on the system's ideal FCC sites (:meth:`systems.alloys.fcc.FCCLattice.to_atoms`,
no Vegard scaling): extxyz (``ase.io.write``) or an ASE SQLite database (``ase.db``), atomically,
so that a failure leaves no file.

Per structure (extxyz: ``atoms.info``; database: the row's key_value_pairs):

* the energy E (eV, whole cell, as samples.parquet stores it: E_Δμ = E_f − Δμ·N₁) as a
  SinglePointCalculator result, so ``atoms.get_potential_energy()`` returns it after
  ``ase.io.read`` (extxyz: ``energy=`` on the comment line; database: ``row.energy``);
* ``cv_<name>``: the CV values (dimensionless);
* ``log_weight``: the run's headline log-weight, unnormalised, in nats: that of the estimator
  its headline figures use (:func:`pipeline.comparison.main_estimator`; the column is
  :data:`HEADLINE_LOG_WEIGHT`);
* ``weight``: the normalised headline weight w_i = exp(log_w_i) / Σ_j exp(log_w_j);
* ``sample_index``: the sample's row in samples.parquet;
* ``run``: the run name, ``<method>_<temperature tag>``.

Bad input (no such folder, no samples.parquet, a lattice-model run, N < 1, an unknown format or
selection) raises :class:`pipeline.errors.ConfigError` naming the argument, before anything is
written.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from pipeline.errors import ConfigError
from pipeline.outputs import atomic_path, samples_from_table

__all__ = ["FORMATS", "SELECTIONS", "HEADLINE_LOG_WEIGHT", "RunSamples", "load_run_samples", "selected_rows",
           "structures", "write_structures", "export_run", "export_command"]

FORMATS: dict[str, tuple[str, ...]] = {"extxyz": (".extxyz", ".xyz"), "db": (".db",)}
"""Output formats and the file suffixes each accepts (the first names the default output)."""

SELECTIONS: tuple[str, ...] = ("weighted", "lowest-energy", "first")
"""``weighted``: N draws with replacement, probabilities the normalised headline weights;
``lowest-energy``: the N lowest-energy distinct configurations; ``first``: the first N rows."""

HEADLINE_LOG_WEIGHT: dict[str, str] = {"likelihood": "log_w_likelihood", "mcmc": "log_w_bias"}
"""samples.parquet column holding the log-weights of each main estimator: −βE − log q for
trained samplers; for chains the state's physical-target weight (0, or βV for ``mcmc-metad``)."""


@dataclass(frozen=True)
class RunSamples:
    """A run's samples as the export needs them (n samples, D sites, d CV dimensions)."""

    run: str                      # run name, <method>_<temperature tag>
    system: object                # the rebuilt systems.alloys.alloy.BinaryAlloy
    configurations: np.ndarray    # int64 (n, D): occupations, 0 = species[0], 1 = species[1]
    energy: np.ndarray            # float64 (n,): E as stored (E_Δμ, eV, whole cell)
    cv: np.ndarray                # float64 (n, d)
    cv_names: tuple[str, ...]     # d names
    log_weight: np.ndarray        # float64 (n,): headline log-weights, nats, unnormalised
    weight: np.ndarray            # float64 (n,): normalised headline weights, sum 1


def _check_arguments(fmt: str, n: int, selection: str, out: Path | None) -> None:
    if fmt not in FORMATS:
        raise ConfigError("--format", f"must be one of {', '.join(FORMATS)} (extxyz file or ASE database), got {fmt!r}")
    if selection not in SELECTIONS:
        raise ConfigError("--select", f"must be one of {', '.join(SELECTIONS)}, got {selection!r}")
    if n < 1:
        raise ConfigError("--n", f"must be at least 1 (the number of structures to write), got {n}")
    if out is not None and out.suffix not in FORMATS[fmt]:
        raise ConfigError("--out", f"a {fmt} file must end in {' or '.join(FORMATS[fmt])}, got {out}; "
                                   "change the name or --format")


def load_run_samples(run_dir: Path) -> RunSamples:
    """The samples of the alloy run in ``run_dir``, its system rebuilt from its config.yaml
    (energy backend on the CPU: the export evaluates no energy).  Raises ConfigError naming
    RUN_DIR for a folder that is not an alloy run with samples."""
    from pipeline.build import build_system  # noqa: PLC0415 - torch
    from pipeline.comparison import main_estimator  # noqa: PLC0415
    from pipeline.config import expand_runs, load_config  # noqa: PLC0415
    from pipeline.estimators import normalized_weights  # noqa: PLC0415

    if not run_dir.is_dir():
        raise ConfigError("RUN_DIR", f"{run_dir} is not a folder; give a run folder of `metadns run` "
                                     "(OUT/<name>/<method>_<temperature tag>)")
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError("RUN_DIR", f"{run_dir} has no config.yaml, so it is not a run folder of `metadns run`; "
                                     "give one (OUT/<name>/<method>_<temperature tag>)")
    config = load_config(run_dir / "config.yaml")
    if not config.system.has_trait("structures"):
        raise ConfigError("RUN_DIR", f"export writes atomic structures; {run_dir} is a {config.system.name} "
                                     "lattice-model run (export an alloy run)")
    runs = expand_runs(config)
    if len(runs) != 1:
        raise ConfigError("RUN_DIR", f"{run_dir}/config.yaml describes {len(runs)} runs; give the folder of one run")
    samples_path = run_dir / "samples.parquet"
    if not samples_path.is_file():
        raise ConfigError("RUN_DIR", f"{run_dir} has no samples.parquet; finish the run first "
                                     "(`metadns run CONFIG --resume`)")
    system = build_system(config, energy_on_cpu=True)
    samples = samples_from_table(pq.read_table(samples_path))
    n_samples, n_sites = samples["x"].shape
    if n_samples == 0 or n_sites != system.n_sites:
        raise ConfigError("RUN_DIR", f"{samples_path} holds {n_samples} samples of {n_sites} sites; export needs at "
                                     f"least one sample of the run's {system.n_sites} sites: give a run folder whose "
                                     "samples.parquet belongs to its config.yaml")
    column = HEADLINE_LOG_WEIGHT[main_estimator(runs[0].method)]
    log_weight = samples[column]
    try:
        weight = normalized_weights(log_weight)
    except ValueError as error:  # NaN or +inf log-weights
        raise ConfigError("RUN_DIR", f"{samples_path}, column {column}: {error}") from error
    return RunSamples(runs[0].run_name, system, samples["x"], samples["energy"], samples["cv"],
                      tuple(samples["cv_names"]), log_weight, weight)


def selected_rows(samples: RunSamples, selection: str, n: int, seed: int) -> np.ndarray:
    """Rows of samples.parquet to export, int64 (N,), N ≤ n (fewer when ``lowest-energy`` or
    ``first`` find fewer samples).

    ``weighted``: n draws with replacement with probabilities ``samples.weight`` from
    ``numpy.random.default_rng(seed)``, sorted (a row drawn k times appears k times);
    ``lowest-energy``: the first row of each distinct configuration, by increasing energy
    (ties: by row), the n lowest; ``first``: rows 0 … n−1.
    """
    n_samples = samples.energy.size
    if selection == "weighted":
        return np.sort(np.random.default_rng(seed).choice(n_samples, size=n, replace=True, p=samples.weight))
    if selection == "lowest-energy":
        _, first_of_each = np.unique(samples.configurations, axis=0, return_index=True)
        return first_of_each[np.lexsort((first_of_each, samples.energy[first_of_each]))][:n]
    return np.arange(min(n, n_samples))


def structures(samples: RunSamples, rows: np.ndarray) -> list:
    """One ``ase.Atoms`` per row of ``rows`` (int (N,)), with the energy as a
    SinglePointCalculator result and the module docstring's ``info``."""
    from ase.calculators.singlepoint import SinglePointCalculator  # noqa: PLC0415

    columns = {"sample_index": rows, "log_weight": samples.log_weight[rows], "weight": samples.weight[rows],
               **{f"cv_{name}": samples.cv[rows, k] for k, name in enumerate(samples.cv_names)}}
    columns = {name: values.tolist() for name, values in columns.items()}  # plain Python numbers
    energies = samples.energy[rows].tolist()
    images = []
    for position, row in enumerate(rows):
        atoms = samples.system.lattice.to_atoms(samples.configurations[row], samples.system.species)
        atoms.info.update({name: values[position] for name, values in columns.items()}, run=samples.run)
        atoms.calc = SinglePointCalculator(atoms, energy=energies[position])
        images.append(atoms)
    return images


def write_structures(images: list, path: Path, fmt: str) -> Path:
    """Write ``images`` atomically to ``path``: extxyz, or an ASE database whose rows hold each
    structure's ``info`` as key_value_pairs."""
    import ase.db  # noqa: PLC0415
    import ase.io  # noqa: PLC0415

    with atomic_path(path) as tmp:
        if fmt == "extxyz":
            ase.io.write(tmp, images, format="extxyz")
        else:
            with ase.db.connect(tmp, type="db", append=False) as database:
                for atoms in images:
                    database.write(atoms, key_value_pairs=atoms.info)
    return path


def export_run(run_dir: Path, fmt: str, n: int, selection: str, out: Path | None, seed: int) -> tuple[Path, int]:
    """Export ``n`` structures of the run in ``run_dir`` (module docstring) to ``out`` (default
    ``run_dir/export/<selection>.<format>``); returns (path, number of structures)."""
    run_dir = Path(run_dir)
    out = None if out is None else Path(out)
    _check_arguments(fmt, n, selection, out)
    samples = load_run_samples(run_dir)
    rows = selected_rows(samples, selection, n, seed)
    path = out if out is not None else run_dir / "export" / f"{selection}{FORMATS[fmt][0]}"
    return write_structures(structures(samples, rows), path, fmt), rows.size


def export_command(run_dir: Path, fmt: str, n: int, selection: str, out: Path | None, seed: int) -> int:
    """Handler of ``metadns export``: prints what it wrote and returns 0."""
    path, count = export_run(run_dir, fmt, n, selection, out, seed)
    print(f"{count} structures ({selection}) written to {path}")
    return 0
