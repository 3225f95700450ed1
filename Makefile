# advrun: `make run` runs the default experiment, `make test` the test suite.
# Both create .venv and install advrun (editable) with pinned torch on first use.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
DOCS_STAMP := $(VENV)/.docs-stamp
PIP_FLAGS ?= -q --disable-pip-version-check

.PHONY: install run test test-slow test-all test-numerics browser bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install $(PIP_FLAGS) --upgrade pip
	$(BIN)/python -m pip install $(PIP_FLAGS) -c constraints.txt -e '.[test,peers]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/advrun $(ARGS)

# The suite without the tests marked slow (published reference models on the full MNIST test set),
# in TEST_WORKERS processes (pytest-xdist; each test uses one thread).
TEST_WORKERS ?= 2

test: $(STAMP)
	$(BIN)/python -m pytest -m 'not slow' -n $(TEST_WORKERS)

test-slow: $(STAMP)
	$(BIN)/python -m pytest -m slow -s

test-all: $(STAMP)
	$(BIN)/python -m pytest

# The tests marked numerics (peer comparisons, studies, determinism) and not slow: .ci/run runs them
# again under ATEN_CPU_CAPABILITY=avx2 and default, the kernels of other CPUs. Exit 5 (nothing
# selected, e.g. with PYTEST_ADDOPTS narrowing the run) counts as success.
test-numerics: $(STAMP)
	$(BIN)/python -m pytest -m 'numerics and not slow' -n $(TEST_WORKERS) || test $$? -eq 5

# Headless Chromium (Debian's chromium package) for tests/test_report_html.py, which skips without it.
# Needs apt-get and root (or sudo).
SUDO ?= $(if $(filter 0,$(shell id -u)),,sudo)

browser:
	command -v chromium >/dev/null || command -v chromium-browser >/dev/null || { \
	  $(SUDO) apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q --no-install-recommends chromium; }

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_runner.py
	$(BIN)/python benchmarks/bench_attacks.py
	$(BIN)/python benchmarks/bench_sweep.py
	$(BIN)/python benchmarks/bench_certify.py

# The reference pages in docs/ as a site in site/ (MkDocs; --strict: any warning, such as a broken link
# or a page missing from the navigation in mkdocs.yml, fails the build). Installs the docs extra first.
.PHONY: docs
$(DOCS_STAMP): $(STAMP)
	$(BIN)/python -m pip install $(PIP_FLAGS) -c constraints.txt -e '.[docs]'
	touch $(DOCS_STAMP)

docs: $(DOCS_STAMP)
	$(BIN)/python -m mkdocs build --strict --site-dir site

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache site
