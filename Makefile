# hayai: set up, run, test. `make demo` and `make test` each set up what they need first.
#
# torch is installed on its own, before hayai, because the right build depends on the machine:
#   NVIDIA GPU:           make setup                      (PyPI's torch wheels include CUDA)
#   CPU-only machine:     make setup TORCH_INDEX=https://download.pytorch.org/whl/cpu
#   another torch:        make setup TORCH="torch==2.8.0"
# Where pip already finds a local CPU wheel of $(TORCH) (as on our CI machines), that one is used.

PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
TORCH_INDEX ?=
PROMPT ?= a small red circle at the top left on a white background
# the tests' tools, the web UI, the OpenVINO CPU lever (180 MB; its tests skip without it)
EXTRAS ?= test,ui,openvino

BIN := $(VENV)/bin
STAMP := $(VENV)/.hayai-installed

.PHONY: setup demo serve test clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "$(TORCH)"
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[$(EXTRAS)]"
	touch $(STAMP)

demo: setup
	$(BIN)/hayai generate "$(PROMPT)" --steps 20 --seed 42

serve: setup
	$(BIN)/hayai serve

test: setup
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) .pytest_cache
