"""Methods of a run, one module per method family (registered in pipeline/registry.py)."""
