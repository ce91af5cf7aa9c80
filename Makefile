# Every target depends on `install`, so on a fresh machine `make test` and `make bench` do all set-up.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: install test bench bench-fast bench-runtimes repeat clean

install: $(STAMP)

# constraints.txt pins torch to the local CPU wheel; any other version pulls GBs of CUDA packages.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@

test: install
	$(PY) -m pytest

# ruff's rules are in pyproject.toml ([tool.ruff]).
.PHONY: lint
lint: install
	$(VENV)/bin/ruff check .

bench: install
	$(PY) -m bench

# container.optimize against the seed-faithful reference, same weights and inputs, one run: the seed's
# MixBlock at the four stage shapes at their batches (8/16/32/64) and Container-Light at batch 1, in fp32
# and bf16 autocast. --batch-sizes 1 is Container-Light's batch; it also adds the 320@14x14 stage's sweep
# row at batch 1. report.md ends with the runtime table.
bench-fast: install
	$(PY) -m bench --kinds mix --networks container_light --runtime reference,fast --dtype fp32,bf16 \
		--batch-sizes 1 --no-rss

# Every deployment runtime on the same workloads, one run (bench/suite.py runtime_jobs): Container-Light and
# container() at batch 1 and 8, every block kind at the four stage shapes at batch 1, the mix block at the
# four stage shapes at their stage batches; fp32, the machine's threads, peak RSS of each in its own process.
# report.md ends with the runtime table (ratios to the reference and to the fastest runtime of each workload).
bench-runtimes: install
	$(PY) -m bench --suite runtimes --runtime reference,fast,onnxruntime,openvino,aot

# Is this machine's timing reproducible? The same measurement twice, 10 s apart (python -m bench repeat, its
# options are the run's plus --times N and --pause-s S), then how well the runs agree, row by row: the spread
# max / min - 1 of each median, as measured and normalised to the machine's reference speed, against 5%, and
# fast / best with its goal verdict per workload. The default: the conv and mix blocks at the four stage
# shapes (and the 320@14x14 batch sweep) and Container-Light, on fast and onnxruntime, no isolated RSS;
# results in results/repeat/<time>-<commit>/ (report.md). REPEAT_ARGS="--times 3 --pause-s 60 ..." for more.
REPEAT_ARGS ?= --kinds conv,mix --networks container_light --runtime fast,onnxruntime --no-rss
repeat: install
	$(PY) -m bench repeat $(REPEAT_ARGS)

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .benchmarks

# The throughput regression gate (bench/regress/) on a suite file (default: the project's own): exit 0 ok,
# 1 regressed, 2 bad input (e.g. no baseline for this suite and machine). REGRESS_ARGS passes options, e.g.
# REGRESS_ARGS="--against origin/main"; REGRESS_SUITE=my_suite.yaml gates your own rows.
REGRESS_SUITE ?= bench/regress/suites/default.yaml
.PHONY: regress regress-update
regress: install
	$(PY) -m bench regress --suite $(REGRESS_SUITE) $(REGRESS_ARGS)

regress-update: install
	$(PY) -m bench regress --suite $(REGRESS_SUITE) --update $(REGRESS_ARGS)
