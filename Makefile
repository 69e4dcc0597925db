# Two entry points, both self-contained on a fresh Python 3.11 machine (pip, no conda):
#   make quickstart   set up .venv and run workflows/quickstart.yaml
#   make test         set up .venv and run the whole test suite (slow tests included)
PYTHON ?= python3.11
VENV   ?= .venv
# CPU build of PyTorch; clusters with GPUs use environment.yml instead.
TORCH_SPEC ?= torch==2.13.0

.PHONY: venv quickstart test clean-venv

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet $(TORCH_SPEC)
	$(VENV)/bin/pip install --quiet -e '.[test]'
	touch $@

venv: $(VENV)/.installed

quickstart: venv
	$(VENV)/bin/metadns run workflows/quickstart.yaml --out runs --resume

test: venv
	$(VENV)/bin/python -m pytest tests -p no:cacheprovider --timeout 1800

clean-venv:
	rm -rf $(VENV)
