# Two entry points, both self-contained on a fresh Python 3.11 machine (pip, no conda):
#   make quickstart   set up .venv and run workflows/quickstart.yaml
#   make test         set up .venv and run the whole test suite (slow tests included)
PYTHON ?= python3.11
VENV   ?= .venv
# CPU build of PyTorch; clusters with GPUs use environment.yml instead.
TORCH_SPEC ?= torch==2.13.0
# Where pip gets torch. Empty (the default): pip's configured index; on this project's
# development and CI machine that is a local wheel mirror serving the CPU wheel. Elsewhere PyPI's
# Linux torch wheel is a CUDA build, so pass PyTorch's CPU index for a CPU build:
#   make test TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
TORCH_INDEX_URL ?=

.PHONY: venv quickstart test clean-venv

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet $(if $(TORCH_INDEX_URL),--index-url $(TORCH_INDEX_URL) )$(TORCH_SPEC)
	$(VENV)/bin/pip install --quiet -e '.[test]'
	touch $@

venv: $(VENV)/.installed

quickstart: venv
	$(VENV)/bin/metadns run workflows/quickstart.yaml --out runs --resume

test: venv
	$(VENV)/bin/python -m pytest tests -p no:cacheprovider --timeout 1800

clean-venv:
	rm -rf $(VENV)
