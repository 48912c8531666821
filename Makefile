# facesearch: `make demo` sets everything up and runs the main job; `make test` sets up and runs the tests.
PYTHON ?= python3
VENV   ?= .venv
SHARED ?= ../shared
PY     := $(VENV)/bin/python
TORCH_HUB := $(shell $(PYTHON) -c "import os;e=os.environ;print(os.path.join(e.get('TORCH_HOME',os.path.join(e.get('XDG_CACHE_HOME',os.path.expanduser('~/.cache')),'torch')),'hub','checkpoints'))")

.PHONY: setup setup-gpu demo test test-fast bench lfw-protocol clean

setup: $(VENV)/.installed $(TORCH_HUB)/mobilenet_v2-b0353104.pth

# torch is pinned to the build that installs offline on these machines; everything else from setup.cfg
$(VENV)/.installed: setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m compileall -q facesearch  # bytecode now, as a wheel install writes it (not left to PYTHONDONTWRITEBYTECODE)
	touch $@

# FAISS's GPU build in place of faiss-cpu (both install the package `faiss`, so it cannot be an extra)
setup-gpu: setup
	bash scripts/use-faiss-gpu.sh $(PY)

# torchvision looks for ImageNet checkpoints here; facesearch never downloads them
$(TORCH_HUB)/mobilenet_v2-b0353104.pth:
	@if [ -f $(SHARED)/weights/mobilenet_v2-b0353104.pth ]; then \
	  mkdir -p $(TORCH_HUB) && cp $(SHARED)/weights/mobilenet_v2-b0353104.pth $@; \
	else echo "note: $(SHARED)/weights not found; 'facesearch train' will need --pretrained PATH"; fi

demo: setup
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH SHARED=$(SHARED) bash scripts/demo.sh

test: setup
	$(PY) -m pytest

# the fast inner loop: no ../shared, no server, seconds
test-fast: setup
	$(PY) -m pytest tests/unit -q

bench: setup
	$(PY) -m benchmarks.run

# on a GPU machine: the 10 identity-disjoint LFW trainings + the built-in model + GPU benchmarks (~8 min)
lfw-protocol: setup
	SHARED=$(SHARED) PYTHON=$(CURDIR)/$(PY) bash scripts/gpu_session.sh

clean:
	rm -rf demo-home build *.egg-info .pytest_cache
