# The two commands: `make demo` and `make test`. Both set themselves up on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo demo-cluster test bench lint clean constraints

# The runtime dependencies at the versions of constraints.txt (the Docker image's); `make constraints`
# writes it again from the venv after an upgrade.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

constraints: $(STAMP)
	$(PY) deploy/constraints.py

demo: $(STAMP)
	$(PY) -m stocksync demo

demo-cluster: $(STAMP)
	$(PY) -m stocksync demo --cluster

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) -m bench.run_all

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) build dist .pytest_cache
