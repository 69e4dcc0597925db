"""Common-tangent phase diagrams against analytic truth (regular solutions, exact enumeration)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.optimize import brentq, fsolve
from scipy.special import logsumexp

from pipeline import plots
from pipeline.phase_diagram import (BOLTZMANN_EV_PER_K, PhasePoint, canonical_free_energy, common_tangent,
                                    conditional_mean, disordered_lro_baseline, label_phases, lower_convex_hull,
                                    marginal_free_energy, phase_diagram_table, phase_regions,
                                    trim_unresolved_tails)

OMEGA = 1.0           # regular-solution interaction (f units); critical kT = Ω/2
N_FINE = 2000         # grid x = k / N_FINE
GRID = np.arange(N_FINE + 1) / N_FINE
STEP = 1.0 / N_FINE


def entropy_term(x):
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where((x > 0) & (x < 1), x * np.log(x) + (1 - x) * np.log1p(-x), 0.0)


def regular_solution(x, kT, omega=OMEGA):
    """f(x) = Ω x(1−x) + kT[x ln x + (1−x) ln(1−x)] per site."""
    return omega * x * (1 - x) + kT * entropy_term(x)


def symmetric_binodal(kT, omega=OMEGA):
    """Left binodal of the symmetric regular solution: ln(x/(1−x)) = Ω(2x−1)/kT, x < ½."""
    return brentq(lambda x: np.log(x / (1 - x)) - omega * (2 * x - 1) / kT, 1e-300, 0.5 - 1e-7, xtol=1e-15)


def solve_tangent(f, fprime, guess):
    """Independent common tangent: f'(a) = f'(b) = (f(b) − f(a))/(b − a), from a guess."""
    def equations(v):
        a, b = v
        return [fprime(a) - fprime(b), fprime(a) * (b - a) - (f(b) - f(a))]
    # Solve in logit variables so that the iterates stay inside (0, 1).
    expit = lambda u: 1 / (1 + np.exp(-u))  # noqa: E731
    logit = np.log(np.asarray(guess) / (1 - np.asarray(guess)))
    solution, info, ok, message = fsolve(lambda u: equations(expit(u)), logit, xtol=1e-13, full_output=True)
    assert ok == 1, message
    return expit(solution)


# ----------------------------------------------------------------------------- regular solution
@pytest.mark.parametrize("kT", [0.2, 0.3, 0.4, 0.45, 0.49])
def test_regular_solution_binodal_within_one_grid_step(kT):
    result = common_tangent(GRID, regular_solution(GRID, kT))
    assert len(result.regions) == 1
    (gap,) = result.regions
    x_b = symmetric_binodal(kT)
    assert abs(gap.x_left - x_b) <= STEP
    assert abs(gap.x_right - (1 - x_b)) <= STEP
    assert abs(gap.slope) < 1e-9                           # symmetric: horizontal tangent, Δμ = 0
    assert gap.excess == pytest.approx(regular_solution(0.5, kT) - regular_solution(x_b, kT), rel=1e-3)
    assert gap.n_unvisited == 0


@pytest.mark.parametrize("kT", [0.501, 0.55, 0.8, 2.0])
def test_no_coexistence_above_the_critical_temperature(kT):
    result = common_tangent(GRID, regular_solution(GRID, kT))
    assert result.regions == ()
    np.testing.assert_array_equal(result.hull, np.arange(GRID.size))  # strictly convex: every point on the hull


@pytest.mark.parametrize("a", [-0.7, 0.25, 3.0])
def test_linear_term_leaves_compositions_and_shifts_the_slope(a):
    kT = 0.35
    plain = common_tangent(GRID, regular_solution(GRID, kT))
    tilted = common_tangent(GRID, regular_solution(GRID, kT) + a * GRID)
    assert [(r.index_left, r.index_right) for r in tilted.regions] == [(r.index_left, r.index_right)
                                                                       for r in plain.regions]
    assert tilted.regions[0].slope == pytest.approx(plain.regions[0].slope + a, abs=1e-9)


def test_asymmetric_subregular_solution_against_an_independent_tangent_solver():
    kT, w0, w1 = 0.35, 1.0, 0.4                             # Ω(x) = w0 + w1·x: asymmetric gap
    f = lambda x: (w0 + w1 * x) * x * (1 - x) + kT * (x * np.log(x) + (1 - x) * np.log1p(-x))  # noqa: E731
    fprime = lambda x: w0 * (1 - 2 * x) + w1 * (2 * x - 3 * x ** 2) + kT * np.log(x / (1 - x))  # noqa: E731
    a, b = solve_tangent(f, fprime, [0.1, 0.9])
    (gap,) = common_tangent(GRID, regular_solution(GRID, kT, 0) + (w0 + w1 * GRID) * GRID * (1 - GRID)).regions
    assert abs(gap.x_left - a) <= STEP and abs(gap.x_right - b) <= STEP
    assert gap.slope == pytest.approx(fprime(a), abs=2e-3)
    assert not np.isclose(a, 1 - b, atol=0.01)              # really asymmetric


def test_two_separate_miscibility_gaps_against_an_independent_tangent_solver():
    q, w = 1.0, 0.05
    heights = (0.012, 0.02)                                # two Gaussian bumps of different height
    def f(x):
        return q * (x - 0.5) ** 2 + sum(h * np.exp(-(x - c) ** 2 / (2 * w ** 2)) for h, c in zip(heights, (0.25, 0.75)))
    def fprime(x):
        return 2 * q * (x - 0.5) - sum(h * (x - c) / w ** 2 * np.exp(-(x - c) ** 2 / (2 * w ** 2))
                                       for h, c in zip(heights, (0.25, 0.75)))
    truth = [solve_tangent(f, fprime, guess) for guess in ([0.15, 0.35], [0.65, 0.85])]
    result = common_tangent(GRID, f(GRID))
    assert len(result.regions) == 2
    for region, (a, b) in zip(result.regions, truth):
        assert abs(region.x_left - a) <= STEP and abs(region.x_right - b) <= STEP
        assert region.slope == pytest.approx(fprime(a), abs=1e-3)
    regions = phase_regions(result)
    kinds = [r["kind"] for r in regions]
    assert kinds == ["one_phase", "two_phase", "one_phase", "two_phase", "one_phase"]
    middle = regions[2]
    assert middle["x_left"] == result.regions[0].x_right and middle["x_right"] == result.regions[1].x_left
    assert regions[0]["x_left"] == 0.0 and regions[-1]["x_right"] == 1.0


def test_phase_diagram_table_traces_the_binodal_over_temperature():
    n_sites, delta_mu = 400, 0.07                         # k_B = 1 units; SGC runs at Δμ = 0.07
    x = np.arange(n_sites + 1) / n_sites
    temperatures = [0.2, 0.3, 0.4, 0.45, 0.6, 0.9]
    points = []
    for T in temperatures:
        free = n_sites * (regular_solution(x, T) - delta_mu * x) / T   # −ln P(x) of the SGC ensemble, kT units
        points.append(PhasePoint(T, x, free - free.min(), delta_mu, n_sites, info={"tag": f"T{T}"}))
    table = phase_diagram_table(points, boltzmann_constant=1.0)
    two = table[table.kind == "two_phase"].set_index("temperature")
    assert list(two.index) == [T for T in temperatures if T < OMEGA / 2]
    for T, row in two.iterrows():
        x_b = symmetric_binodal(T)
        assert abs(row.x_left - x_b) <= 1 / n_sites and abs(row.x_right - (1 - x_b)) <= 1 / n_sites
        assert abs(row.slope_eV) < 1e-9                   # the run's Δμ is removed: coexistence at Δμ = 0
    assert np.all(np.diff(two.x_left.to_numpy()) > 0)     # the gap narrows as T rises
    for T in temperatures:
        rows = table[table.temperature == T].sort_values("x_left")
        assert rows.x_left.iloc[0] == 0.0 and rows.x_right.iloc[-1] == 1.0   # regions tile [0, 1]
        np.testing.assert_array_equal(rows.x_right.to_numpy()[:-1], rows.x_left.to_numpy()[1:])
        assert (rows.tag == f"T{T}").all()


def test_a_point_resolved_at_one_composition_gives_an_unresolved_row(tmp_path):
    """A sampler stuck in one composition has F at one x only: no tangent exists, the table says
    so for that temperature, and the others are unaffected (the plot skips the row)."""
    n_sites = 8
    x = np.arange(n_sites + 1) / n_sites
    stuck = np.full(x.shape, np.inf)
    stuck[4] = 0.0
    points = [PhasePoint(0.3, x, stuck, 0.0, n_sites, info={"tag": "stuck"}),
              PhasePoint(0.9, x, n_sites * regular_solution(x, 0.9) / 0.9, 0.0, n_sites, info={"tag": "fine"})]
    table = phase_diagram_table(points, boltzmann_constant=1.0)
    stuck_rows = table[table.tag == "stuck"]
    assert stuck_rows.kind.tolist() == ["unresolved"] and stuck_rows.x_left.isna().all()
    assert stuck_rows.n_unvisited.iloc[0] == n_sites
    fine = table[table.tag == "fine"]
    assert set(fine.kind) <= {"one_phase", "two_phase"} and fine.x_left.iloc[0] == 0.0
    path = plots.plot_phase_diagram(tmp_path / "pd.png", table.temperature, table.kind, table.x_left,
                                    table.x_right, table.phase_left, table.phase_right)
    assert Path(path).stat().st_size > 0


# ----------------------------------------------------------------------------- SGC → canonical
def test_canonical_free_energy_inverts_the_semi_grand_canonical_weight():
    """At Δμ_run the SGC FES is N(f − Δμ x)/kT; the recovered f gives the same tangent for any
    Δμ_run, and at Δμ = the tangent slope the SGC FES has two equally deep minima."""
    kT, a, n_sites = 0.3, 0.2, 500
    x = np.arange(n_sites + 1) / n_sites
    f_true = regular_solution(x, kT) + a * x
    tangents = []
    for delta_mu in (-0.4, 0.0, 0.05, 0.9):
        free_kT = n_sites * (f_true - delta_mu * x) / kT
        f, err = canonical_free_energy(x, free_kT - free_kT.min(), kT, delta_mu, n_sites,
                                       stderr_kT=np.full(x.size, 0.1), boltzmann_constant=1.0)
        np.testing.assert_allclose(f - f[0], f_true - f_true[0], atol=1e-12)
        np.testing.assert_allclose(err, 0.1 * kT / n_sites)
        (gap,) = common_tangent(x, f).regions
        tangents.append((gap.index_left, gap.index_right, gap.slope))
    assert len(set((i, j) for i, j, _ in tangents)) == 1
    slope = tangents[0][2]
    assert slope == pytest.approx(a, abs=1e-9)
    coexisting = n_sites * (f_true - slope * x) / kT
    i, j = tangents[0][:2]
    assert coexisting[i] == pytest.approx(coexisting[j], abs=1e-6)
    assert coexisting[i] == pytest.approx(coexisting.min(), abs=1e-6)


def test_canonical_free_energy_matches_exact_enumeration_of_a_cu_au_cell():
    """8-site Cu–Au cell: F_c(x) = −kT ln Σ_{N_Au = Nx} e^{−βE_f} by enumeration; SGC FES at two
    Δμ turned back into f(x) must equal F_c(x)/N (up to a constant)."""
    from systems.alloys.alloy import BinaryAlloy
    from systems.exact import exact_ensemble

    T = 900.0
    beta = 1.0 / (BOLTZMANN_EV_PER_K * T)
    cell = dict(size=[2, 2, 2], cell="primitive", lattice_constant=3.8)
    canonical = exact_ensemble(BinaryAlloy(**cell), beta)     # Δμ = 0: E = E_f
    n_sites = canonical.states.shape[1]
    n_au = canonical.states.long().sum(dim=1).numpy()
    log_terms = -beta * canonical.energies.numpy()
    f_exact = np.array([-logsumexp(log_terms[n_au == k]) for k in range(n_sites + 1)]) / (beta * n_sites)
    for delta_mu in (-0.15, 0.3):
        marginal = exact_ensemble(BinaryAlloy(**cell, delta_mu=delta_mu), beta).cv_marginal()
        x = marginal.values[:, 0]
        f, _ = canonical_free_energy(x, marginal.free_energy(), T, delta_mu, n_sites)
        np.testing.assert_allclose(f - f[0], f_exact - f_exact[0], atol=1e-10)


def test_canonical_free_energy_rejects_bad_input():
    x = np.linspace(0, 1, 5)
    with pytest.raises(ValueError, match="temperature"):
        canonical_free_energy(x, np.zeros(5), -1.0, 0.0, 4)
    with pytest.raises(ValueError, match="n_sites"):
        canonical_free_energy(x, np.zeros(5), 500.0, 0.0, 2.5)
    with pytest.raises(ValueError, match="free_energy_kT"):
        canonical_free_energy(x, np.zeros(4), 500.0, 0.0, 4)


# ----------------------------------------------------------------------------- unvisited points and noise
def test_unvisited_points_inside_a_gap():
    kT = 0.3
    f = regular_solution(GRID, kT)
    x_b = symmetric_binodal(kT)
    exact = common_tangent(GRID, f).regions[0]
    partly = f.copy()
    partly[800:1200] = np.nan                              # middle of the gap never visited
    (region,) = common_tangent(GRID, partly).regions
    assert (region.index_left, region.index_right) == (exact.index_left, exact.index_right)
    assert region.n_unvisited == 400
    fully = f.copy()
    fully[exact.index_left + 1:exact.index_right] = np.nan  # nothing visited between the binodals
    (region,) = common_tangent(GRID, fully, unvisited="gap").regions
    assert abs(region.x_left - x_b) <= STEP and np.isnan(region.excess)
    assert common_tangent(GRID, fully, unvisited="ignore").regions == ()


def test_unvisited_points_outside_the_visited_range_and_in_a_convex_region():
    f = regular_solution(GRID, 0.8)
    f[:100] = np.nan
    f[1900:] = np.nan
    result = common_tangent(GRID, f)
    assert result.regions == ()
    assert result.hull[0] == 100 and result.hull[-1] == 1899
    rows = phase_regions(result)
    assert len(rows) == 1 and rows[0]["x_left"] == GRID[100] and rows[0]["x_right"] == GRID[1899]
    f[1000] = np.nan                                       # one unvisited point in a convex region
    (hole,) = common_tangent(GRID, f, unvisited="gap").regions
    assert (hole.index_left, hole.index_right, hole.n_unvisited) == (999, 1001, 1)
    assert common_tangent(GRID, f, unvisited="ignore").regions == ()
    with pytest.raises(ValueError, match="two finite"):
        common_tangent(GRID, np.where(GRID < 1.0, np.nan, 1.0))


def test_a_stray_visit_to_a_high_free_energy_tail_draws_no_tie_line():
    # A one-phase FES (regular solution above its critical point) on a 64-site grid, where the
    # chains strayed once to x = 4/64 and 5/64 (F known to ±1 k_BT) and never to 6/64 or below 4/64.
    n_sites, T = 64, 0.8
    x = np.arange(n_sites + 1) / n_sites
    free = n_sites * regular_solution(x, T) / T
    stderr = np.full(x.size, 0.05)
    free[:4] = free[6] = np.nan
    stderr[4:6] = 1.0
    point = PhasePoint(T, x, free - np.nanmin(free), 0.0, n_sites, stderr_kT=stderr)
    kept = phase_diagram_table([point], boltzmann_constant=1.0, max_tail_stderr_kT=np.inf)
    assert (kept.kind == "two_phase").sum() == 1          # the unvisited 6/64 reads as a gap
    table = phase_diagram_table([point], boltzmann_constant=1.0)
    assert (table.kind == "one_phase").all() and table.x_left.min() == x[7]
    np.testing.assert_array_equal(trim_unresolved_tails(free, stderr, 0.5)[7:], free[7:])


def test_noise_criterion_rejects_spurious_gaps_and_keeps_real_ones():
    rng = np.random.default_rng(7)
    x = np.arange(101) / 100
    sigma = 1e-3
    noise = rng.normal(0.0, sigma, x.size)
    convex = regular_solution(x, 0.8) + noise
    assert len(common_tangent(x, convex, n_sigma=0.0).regions) >= 1       # noise alone makes kinks
    assert common_tangent(x, convex, np.full(x.size, sigma), n_sigma=5.0).regions == ()
    kT = 0.3
    x_b = symmetric_binodal(kT)
    (gap,) = common_tangent(x, regular_solution(x, kT) + noise, np.full(x.size, sigma), n_sigma=5.0).regions
    assert abs(gap.x_left - x_b) <= 3 / 100 and abs(gap.x_right - (1 - x_b)) <= 3 / 100


def test_adjacent_gaps_merge_unless_the_shared_vertex_is_significantly_low():
    kT, sigma = 0.3, 1e-3
    x = np.arange(101) / 100
    f = regular_solution(x, kT)
    (single,) = common_tangent(x, f).regions
    tangent_at_half = f[single.index_left]                 # symmetric: horizontal tangent
    errors = np.full(x.size, sigma)
    shallow = f.copy()
    shallow[50] = tangent_at_half - 2 * sigma               # below the tangent, but within 3σ
    assert len(common_tangent(x, shallow, errors, n_sigma=3.0).regions) == 1
    deep = f.copy()
    deep[50] = tangent_at_half - 10 * sigma                 # a stable compound at x = ½
    left, right = common_tangent(x, deep, errors, n_sigma=3.0).regions
    assert left.x_right == right.x_left == 0.5
    assert left.slope < 0 < right.slope


def test_lower_convex_hull_on_small_cases():
    x = np.array([0.0, 0.25, 0.5, 0.75, 1.0])
    np.testing.assert_array_equal(lower_convex_hull(x, np.array([0.0, 1.0, -1.0, 1.0, 0.0])), [0, 2, 4])
    np.testing.assert_array_equal(lower_convex_hull(x, np.zeros(5)), [0, 4])        # collinear: end points
    np.testing.assert_array_equal(lower_convex_hull(x, np.array([np.nan, 1.0, 0.0, np.inf, 2.0])), [1, 2, 4])
    with pytest.raises(ValueError, match="strictly increasing"):
        lower_convex_hull(x[::-1], np.zeros(5))


# ----------------------------------------------------------------------------- labels and conditional means
def test_label_phases_rules():
    x = np.array([0.25, 0.5, 0.75, 0.05, 0.5, 0.3, 0.5])
    lro = np.array([0.87, 1.0, 0.87, 0.9, 0.1, np.nan, 0.6])
    assert label_phases(x, lro).tolist() == ["L1_2", "L1_0", "L1_2", "ordered", "disordered", "unknown", "L1_0"]
    # An 8-site cell shows η ≈ 0.65 at x = ½ without any order: 0.6 is then disordered.
    assert disordered_lro_baseline(0.5, 8) == pytest.approx(np.sqrt(3 / 7))
    assert label_phases(x, lro, n_sites=8).tolist()[-1] == "disordered"
    assert label_phases(x, lro, threshold=0.95).tolist()[:3] == ["disordered", "L1_0", "disordered"]


def test_order_parameter_of_ideal_and_random_cu_au_cells():
    """Ideal L1_2 and L1_0 occupations get η = √3/2 and 1 and their labels; random occupations
    at fixed composition have ⟨η²⟩ = 12x(1−x)/(N−1) (the disordered baseline)."""
    from systems.alloys.alloy import BinaryAlloy

    system = BinaryAlloy(size=[4, 4, 4], cell="primitive")
    n = system.n_sites
    sublattice = system.lattice.sublattice
    l12 = (sublattice == 0).long()[None]
    l10 = torch.stack([((sublattice == a) | (sublattice == b)).long() for a, b in ((0, 1), (0, 2), (2, 3))])
    eta = system.observables(torch.cat([l12, l10]))["long_range_order"].numpy()
    np.testing.assert_allclose(eta, [np.sqrt(3) / 2, 1, 1, 1], atol=1e-12)
    assert label_phases([0.25, 0.5, 0.5, 0.5], eta, n_sites=n).tolist() == ["L1_2", "L1_0", "L1_0", "L1_0"]
    generator = torch.Generator().manual_seed(5)
    for k in (16, 32):
        ranks = torch.rand(8000, n, generator=generator).argsort(dim=1)
        x = (ranks < k).long()                              # k solute atoms on random sites
        eta2 = system.observables(x)["long_range_order"].numpy() ** 2
        expected = disordered_lro_baseline(k / n, n) ** 2
        assert abs(eta2.mean() - expected) < 3 * eta2.std() / np.sqrt(eta2.size)
        labels = label_phases(np.full(eta2.size, k / n), np.sqrt(eta2), n_sites=n)
        assert (labels == "disordered").mean() > 0.99


def test_conditional_mean_and_marginal_free_energy():
    grid = np.array([0.0, 0.5, 1.0])
    cv = np.array([0.0, 0.0, 0.49, 0.51, 1.0])
    values = np.array([1.0, 3.0, 2.0, 4.0, 7.0])
    log_w = np.array([0.0, np.log(3.0), 0.0, 0.0, -np.inf])
    means = conditional_mean(cv, values, log_w, grid)
    np.testing.assert_allclose(means[:2], [(1 + 9) / 4, 3.0])
    assert np.isnan(means[2])                              # zero weight at x = 1
    # Marginal of a 2-D FES: P(x) = Σ_η P(x, η).
    p = np.array([[0.1, 0.2], [0.3, 0.0], [0.25, 0.15]])
    points = np.array([[x, eta] for x in (0.0, 0.5, 1.0) for eta in (0.0, 1.0)])
    with np.errstate(divide="ignore"):
        free = -np.log(p.ravel())
    free[np.isinf(free)] = np.nan
    axis, marginal, err = marginal_free_energy(points, free, np.full(6, 0.1))
    np.testing.assert_allclose(axis, [0.0, 0.5, 1.0])
    np.testing.assert_allclose(marginal, -np.log(p.sum(axis=1)) + np.log(p.sum(axis=1).max()))
    np.testing.assert_allclose(err[1], 0.1)                # one bin carries it all
    np.testing.assert_allclose(err[0], 0.1 * np.sqrt(0.1 ** 2 + 0.2 ** 2) / 0.3)


def test_phase_diagram_plot_marks_unreliable_temperatures(tmp_path):
    from matplotlib.image import imread

    from pipeline import plots

    rows = dict(temperature=[500.0, 500.0, 900.0], kind=["two_phase", "one_phase", "one_phase"],
                x_left=[0.25, 0.6, 0.0], x_right=[0.5, 1.0, 1.0], phase_left=["L1_2", "disordered", "disordered"],
                phase_right=["L1_0", "disordered", "disordered"])
    plain = plots.plot_phase_diagram(tmp_path / "plain.png", **rows)
    marked = plots.plot_phase_diagram(tmp_path / "marked.png", **rows, unreliable=[True, True, False])
    assert imread(plain).shape == imread(marked).shape and not np.array_equal(imread(plain), imread(marked))
    with pytest.raises(ValueError, match="unreliable"):
        plots.plot_phase_diagram(tmp_path / "bad.png", **rows, unreliable=[True])
