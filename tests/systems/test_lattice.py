"""SquareLattice geometry against hand-built neighbour lists."""

import pytest
import torch

from systems.lattice import SquareLattice


def site(row, col, L):
    return (row % L) * L + (col % L)


@pytest.mark.parametrize("L", [2, 3, 5])
def test_neighbours_match_hand_built_periodic_table(L):
    lattice = SquareLattice(L)
    expected = [
        [site(r, c + 1, L), site(r + 1, c, L), site(r, c - 1, L), site(r - 1, c, L)]
        for r in range(L) for c in range(L)
    ]
    assert lattice.n_sites == L * L
    assert lattice.neighbours.dtype == torch.int64
    assert lattice.neighbours.tolist() == expected
    assert lattice.coordinates.dtype == torch.float64
    assert lattice.coordinates.tolist() == [[float(r), float(c)] for r in range(L) for c in range(L)]


@pytest.mark.parametrize("L", [3, 4])
def test_bonds_list_every_nearest_neighbour_pair_once(L):
    lattice = SquareLattice(L)
    pairs = [tuple(sorted(b)) for b in lattice.bonds.tolist()]
    assert len(pairs) == 2 * L * L
    assert len(set(pairs)) == 2 * L * L  # no bond twice for L >= 3
    expected = set()
    for r in range(L):
        for c in range(L):
            expected.add(tuple(sorted((site(r, c, L), site(r, c + 1, L)))))
            expected.add(tuple(sorted((site(r, c, L), site(r + 1, c, L)))))
    assert set(pairs) == expected


def test_l2_has_double_bonds_consistent_with_neighbours():
    lattice = SquareLattice(2)
    # every site's right neighbour is also its left neighbour; each pair appears twice
    assert torch.equal(lattice.neighbours[:, 0], lattice.neighbours[:, 2])
    pairs = [tuple(sorted(b)) for b in lattice.bonds.tolist()]
    assert sorted(pairs) == sorted([(0, 1), (0, 1), (2, 3), (2, 3), (0, 2), (0, 2), (1, 3), (1, 3)])


def test_shift_translates_and_composes():
    L = 5
    lattice = SquareLattice(L)
    assert lattice.shift(2, axis=1).tolist() == [site(r, c + 2, L) for r in range(L) for c in range(L)]
    assert lattice.shift(-1, axis=0).tolist() == [site(r - 1, c, L) for r in range(L) for c in range(L)]
    assert torch.equal(lattice.shift(1, 0)[lattice.shift(2, 0)], lattice.shift(3, 0))
    assert torch.equal(lattice.shift(L, 1), torch.arange(L * L))


@pytest.mark.parametrize("bad", [1, 0, 2.5, True, -3])
def test_rejects_bad_size(bad):
    with pytest.raises(ValueError, match="L must be an integer >= 2"):
        SquareLattice(bad)


def test_shift_rejects_bad_axis():
    with pytest.raises(ValueError, match="axis"):
        SquareLattice(3).shift(1, axis=2)
