# The course's commands. README.md names two of them: `make course` and `make test`.
VENV ?= .venv
BIN := $(VENV)/bin
# Tests run the embedded default, offline, on whatever machine: deterministic and quick.
TEST_ENV := FTLEARN_PROFILE=tiny HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false MPLBACKEND=Agg

.PHONY: setup course course-headless test test-latest test-unit test-notebooks lint lock build-tiny clean

setup:  ## create .venv and install requirements.lock's exact versions (idempotent)
	bash scripts/setup.sh $(VENV)

course: setup  ## open the course in JupyterLab
	$(BIN)/jupyter lab notebooks/ $(if $(filter 0,$(shell id -u)),--allow-root)  # root in a container: Jupyter refuses without it

course-headless: setup  ## no browser: execute every notebook in order into runs/executed/
	$(BIN)/ftlearn run-notebooks

test: setup lint  ## everything CI runs: lint, unit tests, every notebook under nbval
	$(TEST_ENV) $(BIN)/pytest tests notebooks --nbval-lax --nbval-current-env -p no:cacheprovider --durations=15

test-latest:  ## the drift check: the newest versions requirements.txt allows, in .venv-latest, whole suite
	bash scripts/setup.sh .venv-latest latest
	.venv-latest/bin/ruff check ftlearn tests benchmarks notebooks scripts
	$(TEST_ENV) FTLEARN_LATEST=1 .venv-latest/bin/pytest tests notebooks --nbval-lax --nbval-current-env -p no:cacheprovider --durations=15

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
