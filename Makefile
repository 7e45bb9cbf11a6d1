# graphopt: `make demo` runs the main job, `make test` the test suite. Both bootstrap .venv.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# torch is pinned here (a CPU build available locally); the package itself requires torch>=2.4.
TORCH_PIN := torch==2.13.0

.PHONY: demo demo-backends test lint bench clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_PIN)
	$(BIN)/python -m pip install --quiet -e '.[tvm,test]' $(TORCH_PIN)
	touch $(STAMP)

# The digits pipeline: prune → recover → int8 → QAT, test accuracy after every stage.
demo: $(STAMP)
	$(BIN)/graphopt run examples/digits.yaml

# ResNet-18: fold BatchNorm, ONNX Runtime and tuned TVM side by side.
demo-backends: $(STAMP)
	$(BIN)/graphopt run examples/demo.yaml

test: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider

lint: $(STAMP)
	$(BIN)/ruff check graphopt tests benchmarks examples

bench: $(STAMP)
	$(BIN)/python benchmarks/backends.py

clean:
	rm -rf $(VENV) out
