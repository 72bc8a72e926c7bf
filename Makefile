# The README's two commands. Each does all of its own set-up on a fresh machine:
#   make demo   venv + install + Fashion-MNIST, then the embedded demo search (CPU, a few minutes)
#   make test   the same set-up, then lint, type check and the test suite
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.automl-kd-installed
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
# torch is pinned to the build this machine serves from its own disk (see DEVELOPERS.md)
TORCH := torch==2.14.1 torchvision==0.29.1
APT := DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
LINTED := src tests benchmarks examples plugins

.PHONY: demo test install data testdeps lint typecheck pytest clean

$(STAMP): pyproject.toml plugins/automl-kd-nasbench/pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel
	$(PIP) install -q $(TORCH)
	$(PIP) install -q -e '.[dev,llm,bench]' -e plugins/automl-kd-nasbench
	@touch $@

install: $(STAMP)

# Fashion-MNIST comes from Debian's dataset-fashion-mnist package (offline-safe)
data: $(FMNIST)
$(FMNIST):
	$(SUDO) apt-get update -qq
	$(SUDO) $(APT) dataset-fashion-mnist

# what the tests start for real: a PostgreSQL server (scale-out tests) and Chromium (the HTML report test)
PG_INITDB := $(firstword $(wildcard /usr/lib/postgresql/*/bin/initdb))
testdeps: data
	@missing=""; \
	[ -n "$(PG_INITDB)" ] || missing="$$missing postgresql"; \
	command -v chromium >/dev/null || missing="$$missing chromium fonts-liberation"; \
	if [ -n "$$missing" ]; then $(SUDO) apt-get update -qq && $(SUDO) $(APT) $$missing; fi

demo: install data
	$(VENV)/bin/automl-kd demo

lint: install
	$(VENV)/bin/ruff check $(LINTED)
	$(VENV)/bin/ruff format --check $(LINTED)

typecheck: install
	$(VENV)/bin/mypy

pytest: install testdeps
	$(VENV)/bin/pytest -q -ra

test: lint typecheck pytest

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .ruff_cache
