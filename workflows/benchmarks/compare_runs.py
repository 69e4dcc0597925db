#!/usr/bin/env python
"""Usage: python workflows/benchmarks/compare_runs.py BEFORE_DIR AFTER_DIR

Bitwise comparison of two run trees: samples.parquet columns (file metadata excluded),
plus observables (cost rows excluded: wall times), histograms and fes tables."""
import sys, pathlib
import numpy as np, pyarrow.parquet as pq

def same_table(ta, tb):
    if ta.schema.remove_metadata() != tb.schema.remove_metadata():
        return False
    for c in ta.column_names:
        a, b = ta.column(c).combine_chunks(), tb.column(c).combine_chunks()
        if str(a.type).startswith("fixed_size_list"):
            a, b = a.flatten(), b.flatten()
        na, nb = a.to_numpy(zero_copy_only=False), b.to_numpy(zero_copy_only=False)
        if na.dtype.kind == "f":
            if na.tobytes() != nb.tobytes():
                return False
        elif not np.array_equal(na, nb):
            return False
    return True

a, b = map(pathlib.Path, sys.argv[1:3])
ok = True
for name in ("samples.parquet", "observables.parquet", "histograms.parquet", "fes.parquet"):
    for f in sorted(a.rglob(name)):
        ta, tb = pq.read_table(f), pq.read_table(b / f.relative_to(a))
        if name == "observables.parquet":
            ta = ta.filter(np.asarray(ta.column("estimator").to_pylist()) != "cost")
            tb = tb.filter(np.asarray(tb.column("estimator").to_pylist()) != "cost")
        same = same_table(ta, tb)
        ok &= same
        print(f"{f.relative_to(a)}: {ta.num_rows} rows, {'bitwise identical' if same else 'DIFFERENT'}")
sys.exit(0 if ok else 1)
