# mp — set-up, demo and tests. `make demo` and `make test` work on a fresh machine.
PY      ?= python3.11
VENV    ?= .venv
BIN      = $(VENV)/bin
STAMP    = $(VENV)/.installed
TORCH    = torch==2.13.0

.PHONY: venv demo test lint bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch first (the pinned CPU build), then the package; a range admitting 2.13.0
# installs nothing more.
$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[test,dev]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/mp adapt --kspace sample_data/brain_fastmri.h5 --recon out/demo --out out/demo/adapted.safetensors
	$(BIN)/mp eval out/demo/brain_fastmri.h5 --ref sample_data/brain_fastmri.h5 --figure out/demo/report.png

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/hadolint Dockerfile
	$(BIN)/ruff check mpcli tests bench

bench: $(STAMP)
	$(BIN)/python bench/classical.py

clean:
	rm -rf $(VENV) out
