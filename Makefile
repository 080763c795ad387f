# funnelrec — the two commands a newcomer needs: `make demo` and `make test`.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed

.PHONY: install demo test bench lint clean clean-numba

install: $(STAMP)

# torch is installed first and pinned exactly (a CPU wheel); a plain `torch` would pull CUDA.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

demo: install
	$(BIN)/funnelrec demo

test: install
	$(BIN)/python -m pytest

bench: install
	$(BIN)/python bench/run_all.py

lint: install
	$(BIN)/ruff check src tests bench

clean: clean-numba
	rm -rf $(VENV) .pytest_cache build *.egg-info src/*.egg-info

# numba's on-disk kernel caches (docs/ARCHITECTURE.md: a kernel's cache misses edits to a helper in another file)
clean-numba:
	find src -name '*.nbi' -delete -o -name '*.nbc' -delete
