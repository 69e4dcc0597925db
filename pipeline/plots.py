"""PNG plots of free-energy surfaces, CV histograms and bias growth.

Figures are built with matplotlib's object-oriented API (``matplotlib.figure.Figure`` rendered
by the Agg canvas), so nothing touches pyplot's global state or opens a window.  Each function
renders to memory and writes the PNG atomically (:func:`pipeline.outputs.atomic_write_bytes`),
then returns the path.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from pipeline.outputs import atomic_write_bytes

__all__ = ["plot_fes", "plot_cv_histograms", "plot_bias_growth", "plot_delta_mu_scan"]

_DPI = 120


def _check_png_path(path: str | Path) -> Path:
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"path must end in .png, got {str(path)!r}")
    return path


def _save(figure: Figure, path: Path) -> Path:
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=_DPI)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def _vector(value: Any, argument: str, length: int | None = None) -> np.ndarray:
    array = np.asarray(value, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{argument} must be one-dimensional, got shape {array.shape}")
    if length is not None and array.shape[0] != length:
        raise ValueError(f"{argument} must have length {length}, got {array.shape[0]}")
    return array


def _grid_from_points(points: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(axis0, axis1, F (G0, G1)) if the (G, 2) points form a full product grid, else None."""
    axis0, index0 = np.unique(points[:, 0], return_inverse=True)
    axis1, index1 = np.unique(points[:, 1], return_inverse=True)
    if axis0.size * axis1.size != points.shape[0]:
        return None
    grid = np.full((axis0.size, axis1.size), np.nan)
    grid[index0, index1] = values
    return axis0, axis1, grid


def plot_fes(
    path: str | Path,
    axes_or_points: Any,
    curves: Mapping[str, tuple[Any, Any]],
    cv_names: Sequence[str],
    title: str = "",
) -> Path:
    """Plot free-energy surfaces F(s) in k_BT.

    1-D (``len(cv_names) == 1``): ``axes_or_points`` is the grid (G,) (or a one-element list
    of it); ``curves`` maps label -> (F (G,), stderr (G,) or None); lines with ±stderr bands,
    NaN leaves gaps.  2-D: ``axes_or_points`` is ``[axis0 (G0,), axis1 (G1,)]`` with each F
    of shape (G0, G1), or points (G, 2) with each F of shape (G,); one colour map panel per
    curve on a shared colour scale (NaN left blank; stderr is not drawn).  Returns the path.
    """
    path = _check_png_path(path)
    names = (cv_names,) if isinstance(cv_names, str) else tuple(cv_names)
    if not curves:
        raise ValueError("curves must hold at least one label -> (F, stderr) entry")
    if len(names) == 1:
        figure = Figure(figsize=(6.0, 4.0), layout="constrained")
        ax = figure.add_subplot()
        grid = axes_or_points[0] if isinstance(axes_or_points, (list, tuple)) and len(axes_or_points) == 1 else axes_or_points
        grid = _vector(grid, "axes_or_points")
        for label, (free, stderr) in curves.items():
            free = _vector(free, f"curves[{label!r}] F", grid.size)
            (line,) = ax.plot(grid, free, label=label)
            if stderr is not None:
                err = _vector(stderr, f"curves[{label!r}] stderr", grid.size)
                ax.fill_between(grid, free - err, free + err, color=line.get_color(), alpha=0.25, linewidth=0)
        ax.set_xlabel(names[0])
        ax.set_ylabel("F / k_BT")
        ax.legend()
    elif len(names) == 2:
        n = len(curves)
        figure = Figure(figsize=(4.8 * n, 4.0), layout="constrained")
        panels = figure.subplots(1, n, squeeze=False)[0]
        if isinstance(axes_or_points, (list, tuple)) and len(axes_or_points) == 2:
            axis0 = _vector(axes_or_points[0], "axes_or_points[0]")
            axis1 = _vector(axes_or_points[1], "axes_or_points[1]")
            points = None
        else:
            points = np.asarray(axes_or_points, dtype=np.float64)
            if points.ndim != 2 or points.shape[1] != 2:
                raise ValueError(f"axes_or_points must be [axis0, axis1] or points (G, 2), got shape {points.shape}")
        finite_values = [np.asarray(f, dtype=np.float64) for f, _ in curves.values()]
        finite_values = np.concatenate([f[np.isfinite(f)].ravel() for f in finite_values])
        colour_range = dict(vmin=finite_values.min(), vmax=finite_values.max()) if finite_values.size else {}
        for ax, (label, (free, _stderr)) in zip(panels, curves.items()):
            free = np.asarray(free, dtype=np.float64)
            if points is None:
                if free.shape != (axis0.size, axis1.size):
                    raise ValueError(f"curves[{label!r}] F must have shape {(axis0.size, axis1.size)}, got {free.shape}")
                grid = (axis0, axis1, free)
            else:
                if free.shape != (points.shape[0],):
                    raise ValueError(f"curves[{label!r}] F must have shape ({points.shape[0]},), got {free.shape}")
                grid = _grid_from_points(points, free)
            if grid is not None:
                a0, a1, values = grid
                mesh = ax.pcolormesh(a0, a1, np.ma.masked_invalid(values).T, shading="nearest", cmap="viridis", **colour_range)
            else:
                finite = np.isfinite(free)
                mesh = ax.scatter(points[finite, 0], points[finite, 1], c=free[finite], s=12, cmap="viridis", **colour_range)
            figure.colorbar(mesh, ax=ax, label="F / k_BT")
            ax.set_xlabel(names[0])
            ax.set_ylabel(names[1])
            ax.set_title(label)
    else:
        raise ValueError(f"cv_names must have 1 or 2 entries, got {names}")
    if title:
        figure.suptitle(title)
    return _save(figure, path)


def plot_cv_histograms(
    path: str | Path,
    bin_centres: Any,
    histograms: Mapping[str, tuple[Any, Any]],
    cv_name: str,
    title: str = "",
) -> Path:
    """Step plot of CV histograms (e.g. reweighted sampler vs reference).

    ``bin_centres`` (K,); ``histograms`` maps label -> (probabilities (K,), stderr (K,) or None);
    bands show ±stderr.  Returns the path.
    """
    path = _check_png_path(path)
    if not histograms:
        raise ValueError("histograms must hold at least one label -> (p, stderr) entry")
    centres = _vector(bin_centres, "bin_centres")
    figure = Figure(figsize=(6.0, 4.0), layout="constrained")
    ax = figure.add_subplot()
    for label, (probabilities, stderr) in histograms.items():
        p = _vector(probabilities, f"histograms[{label!r}] p", centres.size)
        (line,) = ax.step(centres, p, where="mid", label=label)
        if stderr is not None:
            err = _vector(stderr, f"histograms[{label!r}] stderr", centres.size)
            ax.fill_between(centres, p - err, p + err, step="mid", color=line.get_color(), alpha=0.25, linewidth=0)
    ax.set_xlabel(cv_name)
    ax.set_ylabel("probability per bin")
    ax.legend()
    if title:
        ax.set_title(title)
    return _save(figure, path)


def plot_bias_growth(
    path: str | Path,
    iterations: Any,
    max_bias_kT: Any,
    coverage: Any,
    title: str = "",
) -> Path:
    """Two stacked panels against training iteration: max V in k_BT, and CV coverage
    (fraction of grid nodes / CV values visited, 0–1).  All inputs (T,).  Returns the path."""
    path = _check_png_path(path)
    steps = _vector(iterations, "iterations")
    max_bias = _vector(max_bias_kT, "max_bias_kT", steps.size)
    covered = _vector(coverage, "coverage", steps.size)
    figure = Figure(figsize=(6.0, 5.0), layout="constrained")
    top, bottom = figure.subplots(2, 1, sharex=True)
    top.plot(steps, max_bias)
    top.set_ylabel("max V / k_BT")
    bottom.plot(steps, covered)
    bottom.set_ylabel("CV coverage")
    bottom.set_ylim(-0.02, 1.02)
    bottom.set_xlabel("outer iteration")
    if title:
        figure.suptitle(title)
    return _save(figure, path)


def plot_delta_mu_scan(path: str | Path, delta_mu: Any, fraction: Any, fraction_stderr: Any,
                       fraction_axis: Any, free_energies: Mapping[float, Any], fraction_name: str,
                       title: str = "") -> Path:
    """Left: ⟨x⟩ against Δμ (eV) with ±stderr bars; right: F(x) in k_BT for each Δμ (NaN gaps).

    ``delta_mu``, ``fraction``, ``fraction_stderr``: (K,); ``fraction_axis`` (G,);
    ``free_energies``: Δμ → F (G,).  Returns the path.
    """
    path = _check_png_path(path)
    delta_mu = _vector(delta_mu, "delta_mu")
    fraction = _vector(fraction, "fraction", delta_mu.size)
    fraction_stderr = _vector(fraction_stderr, "fraction_stderr", delta_mu.size)
    axis = _vector(fraction_axis, "fraction_axis")
    figure = Figure(figsize=(10.0, 4.0), layout="constrained")
    left, right = figure.subplots(1, 2)
    left.errorbar(delta_mu, fraction, yerr=fraction_stderr, marker="o", capsize=3)
    left.set_xlabel("Δμ / eV")
    left.set_ylabel(f"⟨{fraction_name}⟩")
    for value, free in free_energies.items():
        right.plot(axis, _vector(free, f"free_energies[{value}]", axis.size), label=f"Δμ = {value:g} eV")
    right.set_xlabel(fraction_name)
    right.set_ylabel("F / k_BT")
    right.legend(fontsize="small")
    if title:
        figure.suptitle(title)
    return _save(figure, path)


# ---------------------------------------------------------------------------- campaign report
# (pipeline/campaign_report.py: observables against temperature, alloy phase diagrams)
__all__ += ["plot_observables_vs_temperature", "plot_phase_diagram"]

_PHASE_COLOURS = {"disordered": "tab:blue", "L1_2": "tab:red", "L1_0": "tab:green", "ordered": "tab:purple",
                  "unknown": "tab:gray"}


def plot_observables_vs_temperature(path: str | Path, panels: Mapping[str, Mapping[str, tuple[Any, Any, Any]]],
                                    x_label: str, title: str = "") -> Path:
    """One panel per observable, one line per method: value against temperature with ±stderr bars.

    ``panels`` maps observable -> {method: (temperatures (K,), values (K,), stderr (K,))}
    (NaN stderr draws no bar); ``x_label`` names the temperature axis (e.g. "T / K", "β").
    Returns the path.
    """
    path = _check_png_path(path)
    if not panels:
        raise ValueError("panels must hold at least one observable -> {method: (t, value, stderr)} entry")
    n = len(panels)
    columns = min(n, 3)
    rows = -(-n // columns)
    figure = Figure(figsize=(4.6 * columns, 3.6 * rows), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for ax, (observable, curves) in zip(axes, panels.items()):
        for method, (t, value, err) in curves.items():
            t = _vector(t, f"panels[{observable!r}][{method!r}] temperatures")
            value = _vector(value, f"panels[{observable!r}][{method!r}] values", t.size)
            err = _vector(err, f"panels[{observable!r}][{method!r}] stderr", t.size)
            order = np.argsort(t)
            ax.errorbar(t[order], value[order], yerr=np.where(np.isfinite(err), err, 0.0)[order], marker="o",
                        markersize=4, capsize=3, label=method)
        ax.set_xlabel(x_label)
        ax.set_ylabel(observable)
        ax.legend(fontsize="small")
    for ax in axes[n:]:
        ax.set_visible(False)
    if title:
        figure.suptitle(title)
    return _save(figure, path)


def plot_phase_diagram(path: str | Path, temperature: Any, kind: Sequence[str], x_left: Any, x_right: Any,
                       phase_left: Sequence[str], phase_right: Sequence[str], panel: Sequence[str] | None = None,
                       x_label: str = "x", title: str = "", unreliable: Sequence[bool] | None = None) -> Path:
    """Temperature–composition phase diagram from a region table (one entry per region).

    Two-phase regions (``kind == "two_phase"``) are drawn as black tie-lines from x_left to
    x_right with end markers coloured by the coexisting phases' labels; one-phase regions as
    thick translucent bars coloured by their label (a single composition as a marker).
    All inputs (R,); ``panel`` (R,) groups rows into side-by-side panels (e.g. campaigns);
    ``unreliable`` (R,) marks the temperatures whose run failed its coverage check (a red
    "unreliable" beside the row). The legend sits outside the axes. Returns the path.
    """
    path = _check_png_path(path)
    temperature = _vector(temperature, "temperature")
    x_left = _vector(x_left, "x_left", temperature.size)
    x_right = _vector(x_right, "x_right", temperature.size)
    kind = np.asarray(kind, dtype=str)
    phase_left, phase_right = np.asarray(phase_left, dtype=str), np.asarray(phase_right, dtype=str)
    panel = np.full(temperature.size, "") if panel is None else np.asarray(panel, dtype=str)
    unreliable = np.zeros(temperature.size, dtype=bool) if unreliable is None else np.asarray(unreliable, dtype=bool)
    for name, values in (("kind", kind), ("phase_left", phase_left), ("phase_right", phase_right), ("panel", panel),
                         ("unreliable", unreliable)):
        if values.shape != temperature.shape:
            raise ValueError(f"{name} must have length {temperature.size}, got shape {values.shape}")
    if temperature.size == 0:
        raise ValueError("the phase-diagram table is empty: nothing to plot")
    names = list(dict.fromkeys(panel.tolist()))
    figure = Figure(figsize=(7.0 * len(names), 4.5), layout="constrained")
    axes = figure.subplots(1, len(names), squeeze=False)[0]
    levels = np.unique(temperature)
    bar = 0.2 * (np.min(np.diff(levels)) if levels.size > 1 else max(abs(levels[0]), 1.0) * 0.1)
    for ax, name in zip(axes, names):
        mine = panel == name
        seen = set()
        for t, k, a, b, pa, pb in zip(temperature[mine], kind[mine], x_left[mine], x_right[mine],
                                      phase_left[mine], phase_right[mine]):
            if k == "unresolved":   # no composition range to draw
                continue
            if k == "two_phase":
                ax.plot([a, b], [t, t], color="black", linewidth=1.2, zorder=2)
                for x, phase in ((a, pa), (b, pb)):
                    ax.plot([x], [t], "o", color=_PHASE_COLOURS.get(phase, "black"), markersize=6, zorder=3,
                            label=None if phase in seen else phase)
                    seen.add(phase)
            else:
                colour = _PHASE_COLOURS.get(pa, "black")
                if b > a:
                    ax.fill_between([a, b], t - bar / 2, t + bar / 2, color=colour, alpha=0.35, linewidth=0,
                                    label=None if pa in seen else pa)
                else:
                    ax.plot([a], [t], "s", color=colour, alpha=0.6, label=None if pa in seen else pa)
                seen.add(pa)
        for t in np.unique(temperature[mine & unreliable]):
            ax.text(1.03, t, "unreliable", color="crimson", fontsize="x-small", va="center",
                    transform=ax.get_yaxis_transform(), clip_on=False)
        ax.set_xlim(-0.02, 1.02)
        ax.set_xlabel(x_label)
        ax.set_ylabel("T / K")
        if name:
            ax.set_title(name)
        ax.legend(fontsize="small", title="phase (tie-lines: two-phase)", title_fontsize="small",
                  loc="upper left", bbox_to_anchor=(1.16, 1.0), borderaxespad=0.0)
    if title:
        figure.suptitle(title)
    return _save(figure, path)


# ---------------------------------------------------------------------------- benchmarks
__all__ += ["plot_fes_convergence"]


def plot_fes_convergence(path: str | Path, panels: Mapping[str, Mapping[str, tuple[Any, Any]]],
                         threshold_kT: float, x_label: str, title: str = "") -> Path:
    """One panel per setting (e.g. per β), one line per method: FES RMSE in k_BT against a cost
    (hills deposited, energy evaluations) on a log axis, with the target RMSE dashed.

    ``panels`` maps panel title -> {method: (cost (T,), rmse_kT (T,))}.  Returns the path.
    """
    path = _check_png_path(path)
    if not panels:
        raise ValueError("panels must hold at least one title -> {method: (cost, rmse)} entry")
    figure = Figure(figsize=(4.6 * len(panels), 3.8), layout="constrained")
    axes = figure.subplots(1, len(panels), squeeze=False).ravel()
    for ax, (panel, curves) in zip(axes, panels.items()):
        for method, (cost, rmse) in curves.items():
            cost = _vector(cost, f"panels[{panel!r}][{method!r}] cost")
            ax.plot(cost, _vector(rmse, f"panels[{panel!r}][{method!r}] rmse", cost.size), label=method)
        ax.axhline(threshold_kT, color="k", linestyle="--", linewidth=0.8)
        ax.set_xscale("log")
        ax.set_xlabel(x_label)
        ax.set_ylabel("FES RMSE / k_BT")
        ax.set_title(panel)
        ax.legend(fontsize="small")
    if title:
        figure.suptitle(title)
    return _save(figure, path)
