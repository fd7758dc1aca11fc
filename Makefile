# Every target works on a fresh machine with only python3: the venv is created and the
# package installed on first use, and again only when pyproject.toml changes.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: run simulator test lint typecheck schema schema-check pytest test-services bench soak clean

$(INSTALLED): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

run: $(INSTALLED)
	$(BIN)/numbers-gateway serve --host $(HOST) --port $(PORT)

simulator: $(INSTALLED)
	$(BIN)/numbers-gateway simulator --host $(HOST) --port 8001

lint: $(INSTALLED)
	$(BIN)/ruff check gateway tests benchmarks
	$(BIN)/ruff format --check gateway tests benchmarks

typecheck: $(INSTALLED)
	$(BIN)/mypy

# Regenerates the committed SDL from the code.
schema: $(INSTALLED)
	$(BIN)/numbers-gateway export-schema > schema/numbers.graphql

# Fails when the code's schema and the committed SDL differ.
schema-check: $(INSTALLED)
	$(BIN)/numbers-gateway export-schema | diff -u schema/numbers.graphql - \
	  || (echo "schema/numbers.graphql is stale: run 'make schema' and commit it" && exit 1)

# The cache tests need a real redis-server; the tests start it themselves on a free port.
# Where it is missing, install Debian's package if we can; otherwise those tests are skipped
# (pytest prints the reason).
test-services:
	@command -v redis-server >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing redis-server (Debian package) for the cache tests"; \
	    export DEBIAN_FRONTEND=noninteractive; \
	    apt-get install -y -qq redis-server >/dev/null 2>&1 \
	    || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq redis-server >/dev/null 2>&1; } \
	    || echo "could not install redis-server: the Redis tests will be skipped"; \
	  else \
	    echo "redis-server not found: the Redis tests will be skipped"; \
	  fi; \
	}

pytest: $(INSTALLED) test-services
	$(BIN)/python -m pytest

test: lint typecheck schema-check pytest

bench: $(INSTALLED)
	$(BIN)/python benchmarks/simulator_scale.py

soak: $(INSTALLED)
	$(BIN)/python benchmarks/soak.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
