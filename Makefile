# The two commands of the README. Each sets itself up: a virtual environment in .venv with vitlib
# and everything the notebooks and tests need (torch comes from PyPI: about 5 GB, a few minutes).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
NOTEBOOKS := $(sort $(wildcard notebooks/0*.ipynb)) notebooks/solutions.ipynb

.PHONY: notebooks test publish setup clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[notebooks,kaggle,test]"
	touch $@

# The main job: the whole series, headless, on the default data (Kaggle data on disk or credentials,
# else the built-in sample, said loudly). Executed copies go to build/notebooks/.
notebooks: setup
	$(BIN)/python -m vitlib download
	VITLIB_PROGRESS=0 $(BIN)/jupyter nbconvert --to notebook --execute --output-dir build/notebooks $(NOTEBOOKS)
	@echo "Executed notebooks: build/notebooks/"

# The tests: lint, unit tests and every notebook under nbval, offline, on the synthetic sample.
test: setup
	$(BIN)/ruff check .
	$(BIN)/python -m pytest tests notebooks --nbval --nbval-current-env --nbval-sanitize-with tests/nbval_sanitize.cfg

# Maintainers: re-execute the committed notebooks in place on real photos (refuses the sample).
# Notebook 04 trains afresh into build/publish-runs/ (never resumes an old run).
publish: setup
	$(BIN)/python -m vitlib download --require-real
	rm -rf build/publish-runs
	VITLIB_PROGRESS=0 VITLIB_RUNS_DIR=$(CURDIR)/build/publish-runs $(BIN)/jupyter nbconvert --to notebook --execute --inplace $(NOTEBOOKS)

clean:
	rm -rf build .pytest_cache .ruff_cache
