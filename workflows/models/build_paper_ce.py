"""Write systems/alloys/data/cuau_paper_ce.json: the MetaDNS paper's Cu–Au cluster expansion.

Usage (from the repository root; run once, the project never reads the source at run time):
    python workflows/models/build_paper_ce.py --source PAPER_CE_ECI.json

The source holds the paper's ECIs (eV per site) in CLEASE's naming, from
CEBulk(fcc, a = 3.8 Å, basis [['Au', 'Cu']], max_cluster_dia = [6.0, 4.5, 4.5]).  An icet
ClusterSpace on the same primitive cell and cutoffs has the same 11 orbits; its parameters
are the ECIs in icet's orbit order (constant, point, pairs and triplets by radius,
quadruplets by radius) except that icet's 2nd and 3rd quadruplets are CLEASE's c4_d0002 and
c4_d0001 (the names swap: CLEASE sorts by diameter, icet by radius).  Before writing, the
script checks the paper's formation energies of L1_2 Cu3Au, L1_0 CuAu and L1_2 CuAu3 in the
64-site cell (−34.1672, −36.1825, −18.7544 meV/atom), which catch any mapping slip.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from ase.build import bulk

from systems.alloys.cluster_expansion import CE_JSON_FORMAT, PAPER_CUAU_CE, ClusterExpansionBackend


LATTICE_CONSTANT = 3.8
CUTOFFS = [6.0, 4.5, 4.5]
CLEASE_NAMES_IN_ICET_ORDER = [
    "c0", "c1_0",
    "c2_d0000_0_00", "c2_d0001_0_00", "c2_d0002_0_00", "c2_d0003_0_00",
    "c3_d0000_0_000", "c3_d0001_0_000",
    "c4_d0000_0_0000", "c4_d0002_0_0000", "c4_d0001_0_0000",  # icet quadruplets 2 and 3 = CLEASE d0002, d0001
]
PAPER_FORMATION_ENERGIES_MEV = {"Cu3Au L1_2": -34.1672, "CuAu L1_0": -36.1825, "CuAu3 L1_2": -18.7544}

CITATION = ("X. Du, J. Nam, J. Choi, W. Guo, S. Edamadaka, J. Sha, E. Pan, Y. Chen, M. Tao, "
            "R. Gómez-Bombarelli, \"MetaDNS: Enhancing Exploration in Discrete Neural Samplers via "
            "Well-Tempered Metadynamics\", ICML 2026, arXiv:2605.21722. ECIs of the paper's Cu–Au "
            "cluster expansion (CLEASE), from its public code release.")
LICENSE = """MIT License

Copyright (c) 2025-2026 Xiaochen Du, Juno Nam, Jaemoo Choi, Wei Guo, Sathya Edamadaka,
Junyi Sha, Elton Pan, Yongxin Chen, Molei Tao, Rafael Gómez-Bombarelli

Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal
in the Software without restriction, including without limitation the rights
to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
SOFTWARE."""


def paper_model(ecis: dict) -> dict:
    """The project's JSON model (see systems.alloys.cluster_expansion.build_cluster_expansion)."""
    from icet import ClusterSpace

    if sorted(ecis) != sorted(CLEASE_NAMES_IN_ICET_ORDER):
        raise ValueError(f"source ECIs {sorted(ecis)} are not the paper's 11 {sorted(CLEASE_NAMES_IN_ICET_ORDER)}")
    primitive = bulk("Cu", "fcc", a=LATTICE_CONSTANT)
    space = ClusterSpace(primitive, CUTOFFS, ["Cu", "Au"])
    orbits = [{"order": row["order"], "radius": round(float(row["radius"]), 6), "multiplicity": row["multiplicity"],
               "clease_name": name} for row, name in zip(space.as_list, CLEASE_NAMES_IN_ICET_ORDER)]
    return {
        "format": CE_JSON_FORMAT,
        "description": "Cu–Au FCC cluster expansion of the MetaDNS paper; energies in eV per site.",
        "lattice": "fcc",
        "lattice_constant": LATTICE_CONSTANT,
        "primitive_cell": np.asarray(primitive.cell[:]).tolist(),
        "positions": primitive.get_scaled_positions().tolist(),
        "chemical_symbols": ["Cu", "Au"],
        "cutoffs": CUTOFFS,
        "parameters": [float(ecis[name]) for name in CLEASE_NAMES_IN_ICET_ORDER],
        "orbits": orbits,
        "citation": CITATION,
        "license": LICENSE,
    }


def formation_energies_mev(model_path: Path) -> dict:
    """E_f (meV/atom) of the three ordered phases in the 4×4×4 primitive (64-site) cell."""
    supercell = bulk("Cu", "fcc", a=LATTICE_CONSTANT).repeat(4)
    backend = ClusterExpansionBackend(model_path, supercell)
    parity = np.rint(supercell.positions / (LATTICE_CONSTANT / 2)).astype(int) % 2
    sublattice = 2 * parity[:, 0] + parity[:, 1]  # conventional-cell sublattice 0..3
    occupations = np.stack([np.zeros(64, int), np.ones(64, int), np.isin(sublattice, [0]),
                            np.isin(sublattice, [0, 3]), np.isin(sublattice, [0, 1, 2])]).astype(np.int64)
    energy = backend.energy(occupations).numpy() / 64
    fraction = occupations.mean(axis=1)
    formation = energy - (1 - fraction) * energy[0] - fraction * energy[1]
    return {name: 1000 * float(value) for name, value in zip(PAPER_FORMATION_ENERGIES_MEV, formation[2:])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, required=True,
                        help="the paper's ECIs as JSON in CLEASE's naming (name -> eV per site), see CITATION")
    parser.add_argument("--output", type=Path, default=PAPER_CUAU_CE)
    args = parser.parse_args()
    model = paper_model(json.loads(args.source.read_text()))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    candidate = args.output.with_suffix(".tmp.json")
    candidate.write_text(json.dumps(model, indent=1, ensure_ascii=False) + "\n")
    formation = formation_energies_mev(candidate)
    for name, value in formation.items():
        print(f"{name}: E_f = {value:.4f} meV/atom (paper {PAPER_FORMATION_ENERGIES_MEV[name]:.4f})")
        if abs(value - PAPER_FORMATION_ENERGIES_MEV[name]) > 1e-3:
            candidate.unlink()
            raise SystemExit(f"{name}: {value:.4f} meV/atom differs from the paper's value; mapping is wrong")
    candidate.replace(args.output)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
