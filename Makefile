# Two-command quick start: `make demo` and `make test`. Both create .venv when missing.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export MUJOCO_GL ?= egl

.PHONY: demo test test-all lint format bench experiments clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# The CPU build of torch first, or a dependency pulls the CUDA build.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[test]'
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/mbrm demo

test: $(STAMP)
	bash scripts/ensure_browser.sh
	$(BIN)/python -m pytest -q

test-all: $(STAMP)
	bash scripts/ensure_browser.sh
	$(BIN)/python -m pytest -q -m ''

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: $(STAMP)
	$(BIN)/python benchmarks/world_model.py
	$(BIN)/python benchmarks/planner.py --dtype float32
	$(BIN)/python benchmarks/qp_filter.py

# mbrl-lib 0.2.0's PETS-CEM planning step beside ours, alternately (installs it into benchmarks/.mbrl-lib).
.PHONY: bench-mbrl
bench-mbrl: $(STAMP)
	$(BIN)/python benchmarks/mbrl_lib_pets.py

# The README's Results tables (each script reuses finished runs under benchmarks/runs/).
experiments: $(STAMP)
	$(BIN)/python benchmarks/exp1_preferences.py --oracle-mode
	for n in 5_reward_alignment 2_offpolicy_queries 3_side_constraints \
	         4_reward_hacking 6_planners 7_throughput; do \
	  $(BIN)/python benchmarks/exp$$n.py || exit 1; done

clean:
	rm -rf $(VENV) outputs .pytest_cache
