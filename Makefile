# The two commands a newcomer needs: `make demo` and `make test`; `make docs` builds the documentation site.
# Both create .venv when it is missing and install embedpipe with its dependencies at the exact
# versions of constraints.txt (what the README's figures and the tests were run with).
PYTHON      ?= python3
VENV        := .venv
BIN         := $(VENV)/bin
STAMP       := $(VENV)/.installed
CONSTRAINTS := constraints.txt
# Where torch and torchvision come from; e.g. TORCH_INDEX=https://download.pytorch.org/whl/cpu
# installs the CPU-only wheels (about 1 GB instead of about 6 GB with the CUDA libraries).
TORCH_INDEX ?=

.PHONY: demo test docs lint venv lock clean

venv: $(STAMP)

$(STAMP): pyproject.toml $(CONSTRAINTS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade --quiet pip
ifneq ($(TORCH_INDEX),)
	$(BIN)/python -m pip install --quiet -c $(CONSTRAINTS) torch torchvision --index-url $(TORCH_INDEX)
endif
	$(BIN)/python -m pip install --quiet -c $(CONSTRAINTS) -e ".[dev,ray,docs,quality,arrow]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/embedpipe bench --config benchmarks/demo.toml

# The whole suite; tests/test_docs.py runs every code block of README.md and docs/ and builds the site
# with --strict.
test: $(STAMP)
	$(BIN)/python -m pytest -q

# The documentation site (mkdocs.yml) into site/, offline: warnings are errors (--strict).
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

# ruff, then import-linter's layers contract (pyproject.toml): imports flow one way.
lint: $(STAMP)
	$(BIN)/ruff check embedpipe tests benchmarks docs
	$(BIN)/lint-imports

# Re-pin constraints.txt to what .venv holds now (after a deliberate upgrade), then re-run the
# benchmarks whose figures the README quotes.
lock: $(STAMP)
	{ sed -n '/^#/p' $(CONSTRAINTS); $(BIN)/python -m pip freeze --exclude-editable --exclude embedpipe | grep -v '^#'; } > $(CONSTRAINTS).new
	mv $(CONSTRAINTS).new $(CONSTRAINTS)
	touch $(STAMP)

clean:
	rm -rf $(VENV) build site *.egg-info
