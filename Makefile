# Every target works on a fresh machine with only python3: the venv is created and the
# locked dependencies installed on first use, and again only when a lock changes.
# `make run` installs what running needs; `make test` adds the test tools.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
RUNTIME_LOCK := deploy/requirements.lock
TEST_LOCK := deploy/requirements-test.lock
BUILD_LOCK := deploy/requirements-build.lock
RUNTIME := $(VENV)/.runtime
TESTING := $(VENV)/.test
HOST ?= 127.0.0.1
PORT ?= 8000
UV_VERSION := 0.13.9
LOCK_FLAGS := --universal --python-version 3.11 --generate-hashes --quiet

.PHONY: run simulator test test-fast lint typecheck layers schema schema-check docs pytest \
	pytest-fast test-services bench bench-peer soak lock graphiql-assets clean

$(RUNTIME): $(RUNTIME_LOCK) $(BUILD_LOCK) pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --require-hashes -r $(RUNTIME_LOCK) -r $(BUILD_LOCK)
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

$(TESTING): $(TEST_LOCK) $(BUILD_LOCK) pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --require-hashes -r $(TEST_LOCK) -r $(BUILD_LOCK)
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@ $(RUNTIME)

run: $(RUNTIME)
	$(BIN)/numbers-gateway serve --host $(HOST) --port $(PORT)

simulator: $(RUNTIME)
	$(BIN)/numbers-gateway simulator --host $(HOST) --port 8001

lint: $(TESTING)
	$(BIN)/ruff check gateway tests benchmarks tools
	$(BIN)/ruff format --check gateway tests benchmarks tools

typecheck: $(TESTING)
	$(BIN)/mypy

# The README's layer rule: each layer of gateway/ imports only from the layers below it
# (the contracts are [tool.importlinter] in pyproject.toml).
layers: $(TESTING)
	$(BIN)/lint-imports --no-cache

# Regenerates the committed SDL from the code.
schema: $(RUNTIME)
	$(BIN)/numbers-gateway export-schema > schema/numbers.graphql

# Fails when the code's schema and the committed SDL differ.
schema-check: $(TESTING)
	$(BIN)/numbers-gateway export-schema | diff -u schema/numbers.graphql - \
	  || (echo "schema/numbers.graphql is stale: run 'make schema' and commit it" && exit 1)

# The docs site (mkdocs.yml, docs/) into site/ (gitignored). Strict: a broken link or anchor, or a
# page missing from the nav, fails the build. (The variable silences Material's banner about
# MkDocs 2.0, printed on every build.)
docs: $(TESTING)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

# What the tests need from outside Python, installed when missing and when we can (root with
# apt-get): Debian's redis-server (cache tests), nodejs and npm (federation composers, Apollo
# Gateway, Apollo Client, urql, the graphql-http audit: their npm packages are installed by
# the tests into a cache folder outside the repo, pinned by tests/js/package-lock.json),
# chromium (GraphiQL and CORS in a real browser, driven by Playwright with the system
# browser), and Gnumeric's ssconvert (a real spreadsheet opening an export's CSV: no formula
# may be evaluated), the last without its recommended packages (a PDF viewer, among others).
# Where one cannot be had, the tests that need it are skipped with the reason.
APT_PACKAGES := redis-server:redis-server node:nodejs npm:npm chromium:chromium
APT_LEAN_PACKAGES := ssconvert:gnumeric

# $(call apt_install,COMMAND:PACKAGE ...,apt-get flags): each package whose command is missing.
define apt_install
missing=""; for pair in $(1); do \
  command -v $${pair%%:*} >/dev/null 2>&1 || missing="$$missing $${pair##*:}"; \
done; \
if [ -n "$$missing" ]; then \
  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
    echo "installing Debian packages for the tests:$$missing"; \
    export DEBIAN_FRONTEND=noninteractive; \
    apt-get install -y -qq $(2) $$missing >/dev/null 2>&1 \
    || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq $(2) $$missing >/dev/null 2>&1; } \
    || echo "could not install$$missing: the tests that need them will be skipped"; \
  else \
    echo "not installed:$$missing (the tests that need them will be skipped)"; \
  fi; \
fi
endef

test-services:
	@$(call apt_install,$(APT_PACKAGES),)
	@$(call apt_install,$(APT_LEAN_PACKAGES),--no-install-recommends)

pytest: $(TESTING) test-services
	$(BIN)/python -m pytest

# Everything but the tests marked e2e (real processes, Node, a browser), with hypothesis'
# quick profile: the inner loop while editing. CI runs `make test`.
pytest-fast: $(TESTING)
	HYPOTHESIS_PROFILE=dev $(BIN)/python -m pytest -m "not e2e"

test: lint typecheck layers schema-check docs pytest

test-fast: lint typecheck layers pytest-fast

# Each prints its figures side by side with the floor it divides, and the target beside it.
bench: $(TESTING)
	$(BIN)/python benchmarks/simulator_scale.py
	$(BIN)/python benchmarks/large_page.py
	$(BIN)/python benchmarks/phases.py
	$(BIN)/python benchmarks/repeat_query.py
	$(BIN)/python benchmarks/cache_memory.py

# Side by side with Tailcall 1.0 (benchmarks/peer/tailcall.graphql), Hive Gateway (GraphQL Mesh
# over schema/openapi.yaml), the hand-written proxy (benchmarks/hand_proxy.py) and bare
# Starlette: every ratio of issue 31 from one run, ours at 1 and 2 workers, a token per client
# and one shared token, with one request's time by phase where a target is missed. Installs the
# pinned npm packages into a cache folder outside the repo on first use; loads with wrk when
# installed (Debian: apt-get install wrk).
bench-peer: $(TESTING)
	$(BIN)/python benchmarks/peer_gateway.py

soak: $(TESTING)
	$(BIN)/python benchmarks/soak.py

# After changing dependencies in pyproject.toml: re-resolve and re-hash the locks.
lock: $(TESTING)
	$(BIN)/python -m pip install --quiet 'uv==$(UV_VERSION)'
	$(BIN)/uv pip compile pyproject.toml $(LOCK_FLAGS) --extra test -o $(TEST_LOCK)
	# The runtime lock pins what the test lock pins (a test-only package may hold a shared
	# dependency back, as wxc_sdk does python-dateutil): tests run what production runs.
	$(BIN)/uv pip compile pyproject.toml $(LOCK_FLAGS) -c $(TEST_LOCK) -o $(RUNTIME_LOCK)
	printf 'setuptools>=69\n' | $(BIN)/uv pip compile - $(LOCK_FLAGS) -o $(BUILD_LOCK)

# Re-vendors GraphiQL from the npm registry (pinned versions, checksums in MANIFEST.json).
graphiql-assets: $(RUNTIME)
	$(BIN)/python tools/graphiql_refresh.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis .import_linter_cache site
