"""Output files: atomic writes, provenance metadata, Parquet tables and their schemas.

Size (over the ~400-line guide): the atomic writer and the schema of every output table live
together so that the schemas (docs/outputs.md) are checked in one place.

Every file is written atomically: the content goes to a hidden temporary file in the target's
folder (``.<name>.<random>.tmp``), is flushed and fsynced, then ``os.replace``-d onto the
target, so an interrupted run leaves either the old file or the new one, never half a file.
On error the temporary file is removed and the target is untouched.

Every Parquet file carries key/value schema metadata from :func:`provenance_metadata`
(keys prefixed ``metadns.``): config hash, seed, creation time, package versions, git revision,
hostname.  Read it back with :func:`read_parquet_metadata`.  Columns with a unit carry it as
field metadata ``{"unit": ...}`` (:func:`schema_with_units`: :data:`NAMED_UNITS` everywhere,
:func:`system_units` where the writer knows the system).

Tables (column by column; the README copies these):

**observables** (:data:`OBSERVABLES_SCHEMA`, built by :func:`observables_table`), one row per
(run, estimator, observable):

====================  ========  ==============================================================
column                type      meaning
====================  ========  ==============================================================
system                string    registered system name (``ising``, ``potts``, ``triangular_ising``, ``alloy``)
method                string    method (``metadns``, ``mdns``, ``sw``, ...)
temperature           float64   temperature (J/k_B for lattice models, K for alloys)
beta                  float64   inverse temperature 1/(k_B T) (1/J for lattice models, 1/eV for alloys)
delta_mu              float64   chemical-potential difference (energy unit); 0 for lattice models
estimator             string    ``likelihood`` (weights −βE − log q), ``bias`` (weights βV),
                                ``biased_target`` (weights −β(E+V) − log q: ESS of the training
                                target), ``mh`` (independence Metropolis–Hastings samples),
                                ``mcmc`` (reference chains), ``cost`` (energy evaluations,
                                hills and wall times of the run)
observable            string    observable name (e.g. ``abs_magnetisation``, ``energy_per_site``)
unit                  string    unit of ``value`` (``J``, ``eV``, ``1``, ``k_BT``, ``s`` ...)
value                 float64   estimate
stderr                float64   standard error (delta method for weights, autocorrelation-
                                corrected for MCMC); NaN if unknown
ess                   float64   Kish effective sample size of that estimator's weights; NaN if
                                not applicable (mcmc, mh, cost)
n_samples             int64     number of samples (or chain samples) behind the estimate
====================  ========  ==============================================================

**fes** (:func:`fes_schema`, built by :func:`fes_table`), one row per grid point / bin:

====================  ========  ==============================================================
<cv name>             float64   one column per CV dimension (e.g. ``m``; ``p1``, ``p2``): the
                                point's CV value (grid node or bin centre), CV units
free_energy_kT        float64   F(s) in k_BT for the whole system, gauge min = 0; NaN where the
                                source has no data (empty bin)
stderr                float64   standard error of F in k_BT; NaN if unknown
source                string    ``bias`` (F = −γ/(γ−1)·V/kT from the final bias) or ``samples``
                                (−ln P from reweighted samples)
====================  ========  ==============================================================

**samples** (:func:`samples_schema`, built by :func:`samples_table`), one row per sample:

====================  =====================  =================================================
configuration         fixed_size_list<int8>  the D site states 0..q−1 (site order of the system)
order                 fixed_size_list<int16> generation step at which each site was revealed
energy                float64                E(x), energy unit of the system (J for lattices)
cv_<name>             float64                one column per CV dimension, CV units
log_q                 float64                path log-likelihood log q(x | order) (nats)
log_w_bias            float64                unnormalised log bias weight βV(ξ(x))
log_w_likelihood      float64                unnormalised log likelihood weight −βE(x) − log q
====================  =====================  =================================================
"""

from __future__ import annotations

import contextlib
import datetime as _datetime
import importlib.metadata
import math
import os
import platform
import socket
import subprocess
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from pipeline.config import config_hash
from pipeline.registry import WEIGHTINGS
from systems.registry import SYSTEMS

__all__ = [
    "METADATA_PREFIX",
    "ESTIMATORS",
    "FES_SOURCES",
    "OBSERVABLES_SCHEMA",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_text",
    "write_yaml",
    "git_revision",
    "provenance_metadata",
    "UNIT_KEY",
    "NAMED_UNITS",
    "FES_UNITS",
    "system_units",
    "schema_with_units",
    "write_parquet",
    "read_parquet_metadata",
    "observables_table",
    "fes_schema",
    "fes_table",
    "samples_schema",
    "samples_table",
    "samples_from_table",
]

METADATA_PREFIX = "metadns."
# The weightings of pipeline.registry.WEIGHTINGS (likelihood: −βE − log q; bias: βV), then
# biased_target: −β(E+V) − log q (ESS of the training target); mh: independence
# Metropolis–Hastings chain; mcmc: reference chains; cost: energy evaluations, hills and wall
# times of the run.
ESTIMATORS: tuple[str, ...] = (*WEIGHTINGS, "biased_target", "mh", "mcmc", "cost")
FES_SOURCES: tuple[str, ...] = ("bias", "samples")

# --------------------------------------------------------------------------------------------
# Atomic writes
# --------------------------------------------------------------------------------------------


def _fsync_directory(folder: Path) -> None:
    """Best effort: persist the rename in the directory entry (not possible on every OS)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Context manager yielding a temporary path in ``path``'s folder; write the file there.

    On normal exit the temporary file is fsynced and renamed onto ``path`` (creating parent
    folders first); if the block raises, or leaves no file, the temporary file is removed,
    ``path`` is untouched and the exception propagates.
    """
    target = Path(path)
    if target.name in ("", ".", ".."):
        raise ValueError(f"path must name a file, got {str(path)!r}")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"nothing was written to the temporary file for {target}")
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    _fsync_directory(target.parent)


def remove_stale_temporaries(folder: str | Path) -> None:
    """Delete temporary files (``.<name>.<random>.tmp``, see :func:`atomic_path`) that an
    atomic write left behind when its process was killed. A missing folder is fine."""
    for stale in Path(folder).glob(".*.tmp"):
        stale.unlink()


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns the path."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"data must be bytes, got {type(data).__name__}; encode text or use atomic_write_text")
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            handle.write(data)
    return Path(path)


def atomic_write_text(path: str | Path, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically; returns the path."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    return atomic_write_bytes(path, text.encode(encoding))


def _builtin(value: Any) -> Any:
    """numpy scalars/arrays, tuples and Paths to plain Python values (for YAML)."""
    if isinstance(value, Mapping):
        return {_builtin(k): _builtin(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_builtin(v) for v in value]
    if isinstance(value, np.ndarray):
        return _builtin(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return value


def write_yaml(path: str | Path, obj: Any) -> Path:
    """Dump ``obj`` (mappings, lists, scalars; numpy values converted) as YAML, atomically.

    The YAML text is produced before anything is written, so an object that cannot be
    represented raises without creating a file.
    """
    text = yaml.safe_dump(_builtin(obj), sort_keys=False, default_flow_style=False, allow_unicode=True)
    return atomic_write_text(path, text)


# --------------------------------------------------------------------------------------------
# Provenance
# --------------------------------------------------------------------------------------------


def _package_version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def git_revision(folder: str | Path | None = None) -> str:
    """``git rev-parse HEAD`` of the repository containing ``folder`` (default: this package),
    with ``-dirty`` appended when tracked files have uncommitted changes; ``"unknown"`` when
    git is missing or the folder is not in a checkout with a commit.  Read-only: uses
    ``--no-optional-locks`` so it never takes the index lock."""
    folder = Path(folder) if folder is not None else Path(__file__).resolve().parent

    def git(*args: str) -> str | None:
        try:
            result = subprocess.run(
                ["git", "--no-optional-locks", *args],
                cwd=folder,
                capture_output=True,
                text=True,
                timeout=20,
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return result.stdout.strip() if result.returncode == 0 else None

    revision = git("rev-parse", "HEAD")
    if not revision:
        return "unknown"
    status = git("status", "--porcelain", "--untracked-files=no")
    return revision + "-dirty" if status else revision


def provenance_metadata(
    config_dict: Mapping[str, Any], seed: int, extra: Mapping[str, Any] | None = None
) -> dict[str, str]:
    """Key/value provenance for output files (all values strings).

    Keys: config_hash (:func:`pipeline.config.config_hash` of ``config_dict``), seed,
    created (UTC ISO 8601), metadns, python, torch, numpy, pyarrow (versions), git_revision
    (see :func:`git_revision`), hostname; plus ``extra`` (stringified; a key that clashes with
    these raises ValueError).
    """
    if not isinstance(config_dict, Mapping):
        raise TypeError(f"config_dict must be a mapping (Config.to_dict()), got {type(config_dict).__name__}")
    try:
        import torch  # noqa: PLC0415  (heavy; only needed for its version)

        torch_version = str(torch.__version__)
    except ImportError:
        torch_version = "unknown"
    metadata = {
        "config_hash": config_hash(config_dict),
        "seed": str(int(seed)),
        "created": _datetime.datetime.now(_datetime.timezone.utc).isoformat(timespec="seconds"),
        "metadns": _package_version("metadns"),
        "python": platform.python_version(),
        "torch": torch_version,
        "numpy": np.__version__,
        "pyarrow": pa.__version__,
        "git_revision": git_revision(),
        "hostname": socket.gethostname(),
    }
    for key, value in (extra or {}).items():
        if key in metadata:
            raise ValueError(f"extra key {key!r} clashes with a provenance key; rename it")
        metadata[str(key)] = str(value)
    return metadata


# --------------------------------------------------------------------------------------------
# Units (Parquet field metadata)
# --------------------------------------------------------------------------------------------

UNIT_KEY = b"unit"
"""Field-metadata key of a column's unit: ``pq.read_schema(path).field(name).metadata[UNIT_KEY]``."""

NAMED_UNITS: dict[str, str] = {
    "free_energy_kT": "kT", "max_bias_kT": "kT", "fes_rmse_kT": "kT",
    "log_q": "nat", "log_w_bias": "nat", "log_w_likelihood": "nat",
    "wall_time_s": "s",
    "energy_eV": "eV", "total_energy_eV": "eV", "formation_energy_eV_per_atom": "eV", "slope_eV": "eV",
    "excess_eV_per_site": "eV",
}
"""Units of the columns whose unit does not depend on the system or the table (most names say
it); :func:`write_parquet` attaches them wherever such a column appears."""

FES_UNITS: dict[str, str] = {"free_energy_kT": "kT", "stderr": "kT"}
"""Units of an FES table's own columns (its ``stderr`` is that of F, in k_BT)."""


def system_units(system) -> dict[str, str]:
    """Units of the columns whose unit is the system's, by column name.

    Energies (``energy``, ``delta_mu``, the E/N histogram edges ``bin_lower``/``bin_upper``) in
    ``system.energy_unit`` (J for the lattice models, eV for alloys); ``temperature`` and
    ``temperature_value`` in the registry's ``temperature_unit`` trait (K for alloys), else in
    energy unit/k_B (k_B = 1); ``beta`` in 1/energy unit; every CV column (``<name>`` and
    ``cv_<name>``) ``"1"``: the registered CVs are fractions and order parameters; every
    observable column and its ``<name>_stderr`` in ``system.observable_units``.
    """
    energy = system.energy_unit
    temperature = SYSTEMS[system.name].traits.get("temperature_unit", f"{energy}/k_B")
    cv_names = system.cv_spec.names
    return {"energy": energy, "delta_mu": energy, "bin_lower": energy, "bin_upper": energy,
            "temperature": temperature, "temperature_value": temperature, "beta": f"1/{energy}",
            **{name: "1" for name in cv_names}, **{f"cv_{name}": "1" for name in cv_names},
            **system.observable_units,
            **{f"{name}_stderr": unit for name, unit in system.observable_units.items()}}


def schema_with_units(schema: pa.Schema, units: Mapping[str, str] | None = None) -> pa.Schema:
    """``schema`` whose fields named in :data:`NAMED_UNITS` or ``units`` (which wins) carry field
    metadata ``{"unit": <unit>}`` beside their other field metadata; other fields, and names
    the schema does not have, are left alone.  Apply to a table with ``table.cast(...)``."""
    merged = {**NAMED_UNITS, **(units or {})}
    fields = [field.with_metadata({**(field.metadata or {}), UNIT_KEY: merged[field.name].encode()})
              if field.name in merged else field for field in schema]
    return pa.schema(fields, metadata=schema.metadata)


# --------------------------------------------------------------------------------------------
# Parquet
# --------------------------------------------------------------------------------------------


def write_parquet(table_or_dataframe: Any, path: str | Path, metadata: Mapping[str, Any],
                  units: Mapping[str, str] | None = None) -> Path:
    """Write a pyarrow Table or pandas DataFrame to Parquet atomically, with ``metadata``
    stored as schema key/value metadata under ``metadns.<key>`` (values stringified) and
    column units as field metadata (:func:`schema_with_units` with ``units``, e.g.
    :func:`system_units`).  Existing schema metadata (e.g. pandas') is kept.  Returns the path."""
    if isinstance(table_or_dataframe, pa.Table):
        table = table_or_dataframe
    else:
        try:
            import pandas as pd  # noqa: PLC0415
        except ImportError:  # pragma: no cover - pandas is a dependency
            pd = None
        if pd is None or not isinstance(table_or_dataframe, pd.DataFrame):
            raise TypeError(
                f"table_or_dataframe must be a pyarrow.Table or pandas.DataFrame, got {type(table_or_dataframe).__name__}"
            )
        table = pa.Table.from_pandas(table_or_dataframe, preserve_index=False)
    if not isinstance(metadata, Mapping):
        raise TypeError(f"metadata must be a mapping of str to str, got {type(metadata).__name__}")
    merged = dict(table.schema.metadata or {})
    for key, value in metadata.items():
        key = str(key)
        full_key = key if key.startswith(METADATA_PREFIX) else METADATA_PREFIX + key
        merged[full_key.encode()] = str(value).encode()
    table = table.replace_schema_metadata(merged)
    table = table.cast(schema_with_units(table.schema, units))
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return Path(path)


def read_parquet_metadata(path: str | Path) -> dict[str, str]:
    """The ``metadns.`` key/value metadata of a Parquet file, prefix stripped."""
    schema = pq.read_schema(path)
    out = {}
    for key, value in (schema.metadata or {}).items():
        key = key.decode()
        if key.startswith(METADATA_PREFIX):
            out[key[len(METADATA_PREFIX):]] = value.decode()
    return out


# --------------------------------------------------------------------------------------------
# observables
# --------------------------------------------------------------------------------------------

OBSERVABLES_SCHEMA = pa.schema(
    [
        ("system", pa.string()),
        ("method", pa.string()),
        ("temperature", pa.float64()),
        ("beta", pa.float64()),
        ("delta_mu", pa.float64()),
        ("estimator", pa.string()),
        ("observable", pa.string()),
        ("unit", pa.string()),
        ("value", pa.float64()),
        ("stderr", pa.float64()),
        ("ess", pa.float64()),
        ("n_samples", pa.int64()),
    ]
)
"""Schema of the observables table (columns described in the module docstring)."""

_OBSERVABLE_DEFAULTS = {"delta_mu": 0.0, "ess": math.nan}


def _row_float(row: Mapping, key: str, index: int) -> float:
    value = row[key]
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"rows[{index}][{key!r}] must be a number, got {value!r}")
    return float(value)


def observables_table(rows: Sequence[Mapping[str, Any]]) -> pa.Table:
    """Build the observables table from one dict per row (keys = column names).

    ``delta_mu`` defaults to 0.0 and ``ess`` to NaN; every other column is required.
    Raises ValueError naming the row and column for a missing or unknown key, a wrong type or
    an unknown estimator.
    """
    columns: dict[str, list] = {name: [] for name in OBSERVABLES_SCHEMA.names}
    valid = set(OBSERVABLES_SCHEMA.names)
    for index, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise ValueError(f"rows[{index}] must be a dict, got {type(row).__name__}")
        unknown = set(row) - valid
        if unknown:
            raise ValueError(f"rows[{index}] has unknown column(s) {sorted(unknown)}; valid: {OBSERVABLES_SCHEMA.names}")
        row = {**_OBSERVABLE_DEFAULTS, **row}
        missing = [name for name in OBSERVABLES_SCHEMA.names if name not in row]
        if missing:
            raise ValueError(f"rows[{index}] is missing column(s) {missing}")
        for field in OBSERVABLES_SCHEMA:
            name = field.name
            if pa.types.is_string(field.type):
                if not isinstance(row[name], str):
                    raise ValueError(f"rows[{index}][{name!r}] must be a string, got {row[name]!r}")
                columns[name].append(row[name])
            elif pa.types.is_int64(field.type):
                value = row[name]
                if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 0:
                    raise ValueError(f"rows[{index}][{name!r}] must be a non-negative integer, got {value!r}")
                columns[name].append(int(value))
            else:
                columns[name].append(_row_float(row, name, index))
        if row["estimator"] not in ESTIMATORS:
            raise ValueError(f"rows[{index}]['estimator'] must be one of {ESTIMATORS}, got {row['estimator']!r}")
    return pa.Table.from_pydict(columns, schema=OBSERVABLES_SCHEMA)


# --------------------------------------------------------------------------------------------
# fes
# --------------------------------------------------------------------------------------------

_FES_VALUE_COLUMNS = ("free_energy_kT", "stderr", "source", "delta_mu")


def _check_cv_names(cv_names: Sequence[str], reserved: Sequence[str], argument: str = "cv_names") -> tuple[str, ...]:
    if isinstance(cv_names, str):
        cv_names = (cv_names,)
    names = tuple(cv_names)
    if not names or not all(isinstance(n, str) and n for n in names):
        raise ValueError(f"{argument} must be a non-empty sequence of non-empty strings, got {cv_names!r}")
    if len(set(names)) != len(names):
        raise ValueError(f"{argument} must be distinct, got {names}")
    clash = [n for n in names if n in reserved]
    if clash:
        raise ValueError(f"{argument} {clash} clash with the table's columns {list(reserved)}; rename the CV")
    return names


def fes_schema(cv_names: Sequence[str]) -> pa.Schema:
    """Schema of an FES table for the given CV names (columns described in the module docstring);
    ``free_energy_kT`` and ``stderr`` carry their unit, k_BT (:data:`FES_UNITS`)."""
    names = _check_cv_names(cv_names, _FES_VALUE_COLUMNS)
    return schema_with_units(pa.schema(
        [(name, pa.float64()) for name in names]
        + [("free_energy_kT", pa.float64()), ("stderr", pa.float64()), ("source", pa.string()),
           ("delta_mu", pa.float64())]
    ), FES_UNITS)


def _to_numpy(value: Any, dtype=None) -> np.ndarray:
    """numpy view of an array-like or torch tensor (moved to CPU, detached)."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):
        value = value.detach().cpu().numpy()
    return np.asarray(value, dtype=dtype)


def fes_table(
    cv_names: Sequence[str],
    points: Any,
    free_energy_kT: Any,
    stderr: Any = None,
    source: str = "bias",
    delta_mu: float = 0.0,
) -> pa.Table:
    """Build an FES table.

    ``points`` (G, d) CV values (a 1-D array is read as (G, 1)); ``free_energy_kT`` (G,) in
    k_BT, NaN allowed; ``stderr`` (G,) or None (all NaN); ``source`` ``"bias"`` or
    ``"samples"``; ``delta_mu`` the semi-grand-canonical Δμ (eV) the FES belongs to (0 for
    lattice models; alloy runs add one samples FES per reweighted Δμ).  For a grid, pass the flattened meshgrid (``indexing="ij"``) and F flattened
    the same way.  Tables of both sources can be concatenated with ``pa.concat_tables``.
    """
    names = _check_cv_names(cv_names, _FES_VALUE_COLUMNS)
    pts = _to_numpy(points, np.float64)
    if pts.ndim == 1:
        pts = pts[:, None]
    if pts.ndim != 2 or pts.shape[1] != len(names):
        raise ValueError(f"points must have shape (G, {len(names)}) for cv_names {names}, got {pts.shape}")
    n = pts.shape[0]
    free = _to_numpy(free_energy_kT, np.float64).reshape(-1)
    if free.shape != (n,):
        raise ValueError(f"free_energy_kT must have shape ({n},) to match points, got {free.shape}")
    err = np.full(n, np.nan) if stderr is None else _to_numpy(stderr, np.float64).reshape(-1)
    if err.shape != (n,):
        raise ValueError(f"stderr must have shape ({n},) to match points, got {err.shape}")
    if source not in FES_SOURCES:
        raise ValueError(f"source must be one of {FES_SOURCES}, got {source!r}")
    if not np.all(np.isfinite(pts)):
        raise ValueError("points must be finite")
    arrays = [pa.array(pts[:, k]) for k in range(len(names))]
    arrays += [pa.array(free), pa.array(err), pa.array([source] * n, pa.string()),
               pa.array(np.full(n, float(delta_mu)))]
    return pa.Table.from_arrays(arrays, schema=fes_schema(names))


# --------------------------------------------------------------------------------------------
# samples
# --------------------------------------------------------------------------------------------

_SAMPLE_SCALAR_COLUMNS = ("energy", "log_q", "log_w_bias", "log_w_likelihood")


def samples_schema(cv_names: Sequence[str], n_sites: int) -> pa.Schema:
    """Schema of a samples table with ``n_sites`` sites and the given CV names."""
    names = _check_cv_names(cv_names, ())
    if int(n_sites) < 1:
        raise ValueError(f"n_sites must be >= 1, got {n_sites}")
    return pa.schema(
        [
            ("configuration", pa.list_(pa.int8(), int(n_sites))),
            ("order", pa.list_(pa.int16(), int(n_sites))),
            ("energy", pa.float64()),
            *[(f"cv_{name}", pa.float64()) for name in names],
            ("log_q", pa.float64()),
            ("log_w_bias", pa.float64()),
            ("log_w_likelihood", pa.float64()),
        ]
    )


def _fixed_size_list(values: np.ndarray, dtype: np.dtype, argument: str) -> pa.FixedSizeListArray:
    info = np.iinfo(dtype)
    if values.size and (values.min() < info.min or values.max() > info.max):
        raise ValueError(f"{argument} values must fit in {np.dtype(dtype).name} ([{info.min}, {info.max}])")
    flat = pa.array(np.ascontiguousarray(values, dtype=dtype).reshape(-1))
    return pa.FixedSizeListArray.from_arrays(flat, values.shape[1])


def samples_table(
    x: Any,
    order: Any,
    energy: Any,
    cv: Any,
    cv_names: Sequence[str],
    log_q: Any,
    log_w_bias: Any,
    log_w_likelihood: Any,
) -> pa.Table:
    """Build a samples table (vectorised, no loop over samples).

    ``x`` int (n, D) site states (must fit int8); ``order`` int (n, D) reveal steps (must fit
    int16); ``energy``, ``log_q``, ``log_w_bias``, ``log_w_likelihood`` float (n,);
    ``cv`` float (n, d) (or (n,) for d = 1) with ``cv_names`` of length d.  Tensors are accepted.
    """
    names = _check_cv_names(cv_names, ())
    x_np = _to_numpy(x)
    order_np = _to_numpy(order)
    if x_np.ndim != 2:
        raise ValueError(f"x must have shape (n, D), got {x_np.shape}")
    n, n_sites = x_np.shape
    if n_sites < 1:
        raise ValueError("x must have at least one site")
    if order_np.shape != x_np.shape:
        raise ValueError(f"order must have the shape of x {x_np.shape}, got {order_np.shape}")
    for argument, array in (("x", x_np), ("order", order_np)):
        if not (np.issubdtype(array.dtype, np.integer) or array.size == 0):
            raise ValueError(f"{argument} must hold integers, got dtype {array.dtype}")
    cv_np = _to_numpy(cv, np.float64)
    if cv_np.ndim == 1:
        cv_np = cv_np[:, None]
    if cv_np.shape != (n, len(names)):
        raise ValueError(f"cv must have shape ({n}, {len(names)}) for cv_names {names}, got {cv_np.shape}")
    scalars = {}
    for argument, value in zip(_SAMPLE_SCALAR_COLUMNS, (energy, log_q, log_w_bias, log_w_likelihood)):
        array = _to_numpy(value, np.float64)
        if array.shape != (n,):
            raise ValueError(f"{argument} must have shape ({n},), got {array.shape}")
        scalars[argument] = array
    arrays = [
        _fixed_size_list(x_np, np.int8, "x"),
        _fixed_size_list(order_np, np.int16, "order"),
        pa.array(scalars["energy"]),
        *[pa.array(np.ascontiguousarray(cv_np[:, k])) for k in range(len(names))],
        pa.array(scalars["log_q"]),
        pa.array(scalars["log_w_bias"]),
        pa.array(scalars["log_w_likelihood"]),
    ]
    return pa.Table.from_arrays(arrays, schema=samples_schema(names, n_sites))


def samples_from_table(table: pa.Table) -> dict[str, np.ndarray]:
    """Inverse of :func:`samples_table`: numpy arrays ``x`` int64 (n, D), ``order`` int64
    (n, D), ``energy``, ``log_q``, ``log_w_bias``, ``log_w_likelihood`` float64 (n,),
    ``cv`` float64 (n, d) and ``cv_names`` (tuple of names, as an object array)."""
    n = table.num_rows

    def matrix(name: str) -> np.ndarray:
        column = table.column(name).combine_chunks()
        n_sites = column.type.list_size if pa.types.is_fixed_size_list(column.type) else None
        flat = column.flatten().to_numpy(zero_copy_only=False).astype(np.int64)
        return flat.reshape(n, n_sites if n_sites is not None else (flat.size // max(n, 1)))

    cv_columns = [name for name in table.column_names if name.startswith("cv_")]
    out = {
        "x": matrix("configuration"),
        "order": matrix("order"),
        "cv": np.stack([table.column(c).to_numpy() for c in cv_columns], axis=1).astype(np.float64)
        if cv_columns
        else np.zeros((n, 0)),
        "cv_names": np.array([c[len("cv_"):] for c in cv_columns], dtype=object),
    }
    for name in _SAMPLE_SCALAR_COLUMNS:
        out[name] = table.column(name).to_numpy().astype(np.float64)
    return out
