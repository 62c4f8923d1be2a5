# Rank to LoRA — the two commands a newcomer needs:
#   make lab    set up .venv (once) and open the course in JupyterLab
#   make test   set up the same .venv and run every test (unit, notebooks, assignments, browser)
# Everything installs into .venv with the pins in constraints.txt; nothing is installed globally.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PORT   ?= 8888
# LAB_ARGS: extra flags for tools/lab.py, e.g. `make lab LAB_ARGS=--no-browser`
LAB_ARGS ?=
# PYTEST_ARGS: extra flags for pytest, e.g. `make test PYTEST_ARGS="-x -k rank"`
PYTEST_ARGS ?=
# TEST_JOBS: how many pytest processes `make test` runs side by side (pytest-xdist). Each test file stays
# in one process (--dist loadfile): a notebook's cells share one kernel, a module's fixtures are built
# once; files go out in collection order, the longest first (tests/conftest.py). Two fit CI's 2 cores
# (every notebook kernel uses one thread); TEST_JOBS=0 runs in this process.
TEST_JOBS ?= 2

LAB_OVERRIDES := $(VENV)/share/jupyter/lab/settings/overrides.json

# The same environment for `make notebooks` (which stores outputs) and `make test`
# (whose nbval run compares against them): CPU device, stable cell names in tracebacks
# and warnings, a fixed hash seed.
export LORA_EDU_DEVICE ?= cpu
export IPYKERNEL_CELL_NAME := <IPY-INPUT>
export PYTHONHASHSEED := 0
export PYDEVD_DISABLE_FILE_VALIDATION := 1

# One numerical (OpenMP) thread wherever notebooks are executed by a target: on a 2-core machine, two threads
# per kernel fight with the other processes of a test run (a browser, a second kernel) and chapter 06 took
# 400 s instead of 47 s. `make notebooks` stores outputs under the same setting that `make test` compares.
test unit nbval notebooks student grade site: export OMP_NUM_THREADS := 1

NBVAL_FLAGS := --nbval --nbval-current-env --nbval-sanitize-with tests/nbval_sanitize.cfg \
               --nbval-cell-timeout=300

.PHONY: help venv lab workbooks reset-workbook progress test unit nbval notebooks lint clean lock student grade

help:
	@echo "make lab        open the course in JupyterLab (PORT=$(PORT), LAB_ARGS=--no-browser ...)"
	@echo "make workbooks  write your own copy of each chapter to workbook/ (never overwrites one)"
	@echo "make reset-workbook NB=01   back up workbook/01_*.ipynb to workbook/backups/, write a fresh one"
	@echo "make progress   your exercises per chapter: done, wrong, not tried (read from workbook/)"
	@echo "make test       run the whole test suite"
	@echo "make unit       unit tests only (no notebooks)"
	@echo "make nbval      execute every notebook and compare with its stored outputs (NB=path to pick one)"
	@echo "make notebooks  re-execute every notebook and store its outputs (NB=path to pick one)"
	@echo "make lint       check the stored notebooks (install cell, executed in order, no errors, no machine paths)"
	@echo "make site       build the course website from the stored outputs in build/site/ (SITE=folder)"
	@echo "make student    nbgrader student copies of every chapter in student/ (see README, For instructors)"
	@echo "make grade A=01_rank  grade every submission of 01_rank: sandboxed autograde, feedback, exports"
	@echo "make lock       regenerate the locked part of constraints.txt"
	@echo "make clean      remove .venv, caches and generated files (never workbook/: your work)"

# The environment: created once, re-installed only when pyproject.toml or constraints.txt change.
# Byte-compiled at install (about a minute on 2 cores): the grading sandbox sees .venv read-only, so a
# kernel there would otherwise compile what it imports from source, every time (pip --no-compile made a
# clean-clone `make test` 2-4 minutes slower).
$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[test,lab]'
	@touch $(STAMP)

$(LAB_OVERRIDES): lab/overrides.json $(STAMP)
	@mkdir -p $(dir $@)
	@cp lab/overrides.json $@

venv: $(STAMP) $(LAB_OVERRIDES)

# `make lab` first runs what `make workbooks` runs (tools/lab.py calls it), then opens workbook/00_welcome.ipynb.
lab: venv
	$(BIN)/python tools/lab.py --port $(PORT) $(LAB_ARGS)

# The learner's copies: workbook/NN_name.ipynb for every notebooks/NN_name.ipynb. An existing workbook is
# never overwritten; one older than its chapter is reported. `make reset-workbook NB=01` (or NB="01 03")
# moves workbook/01_*.ipynb to workbook/backups/ first, then writes a fresh copy. Nothing here deletes.
workbooks: venv
	$(BIN)/python tools/workbooks.py

reset-workbook:
	@test -n "$(NB)" || { echo 'say which chapter: make reset-workbook NB=01'; exit 2; }
	@$(MAKE) --no-print-directory venv
	$(BIN)/python tools/workbooks.py --reset $(NB)

progress: venv
	$(BIN)/python -m lora_edu.progress workbook

test: venv
	$(BIN)/python -m pytest tests notebooks $(NBVAL_FLAGS) -n $(TEST_JOBS) --dist loadfile --no-loadscope-reorder $(PYTEST_ARGS)

unit: venv
	$(BIN)/python -m pytest tests $(PYTEST_ARGS)

# NB=notebooks/01_rank.ipynb limits `make nbval` and `make notebooks` to one notebook
NB ?=
nbval: venv
	$(BIN)/python -m pytest $(or $(NB),notebooks) $(NBVAL_FLAGS) $(PYTEST_ARGS)

notebooks: venv
	$(BIN)/python tools/run_notebooks.py $(NB)

# Student copies of every notebooks/NN_*.ipynb, made by nbgrader with course/nbgrader_config.py:
# course/source/NN_name/ (instructor versions) -> student/NN_name/ (+ the assignments in course/gradebook.db)
student: venv
	$(BIN)/python tools/assignments.py

# A=<assignment> (required), STUDENT=<id> (only that one), GRADE_ARGS="--force --cell-timeout 60 ...",
# COURSE=<nbgrader course directory>. Never writes in $(COURSE)/submitted/ (README, For instructors).
A ?=
STUDENT ?=
GRADE_ARGS ?=
COURSE ?= course
grade: venv
	$(BIN)/python tools/grade.py $(A) --course-dir $(COURSE) $(if $(STUDENT),--student $(STUDENT)) $(GRADE_ARGS)

# Standard library only, so it needs no .venv; tests/test_lint.py runs it as part of `make test`.
lint:
	$(PYTHON) tools/notebook_lint.py notebooks

# The course website from the notebooks' stored outputs (nothing is executed): open $(SITE)/index.html.
# tests/test_site.py builds it the same way and opens every page in headless Chromium.
.PHONY: site
SITE ?= build/site
site: venv
	$(BIN)/python tools/site.py --out $(SITE)

lock:
	$(PYTHON) tools/update_constraints.py

# Never touch workbook/ (the learner's work; tests/test_workbooks.py checks) or course/submitted/ (the
# students' hand-ins, even a __pycache__ a student sent along; tests/test_grading.py checks) here.
KEEP := -path ./workbook -prune -o -path ./course/submitted -prune -o
clean:
	rm -rf $(VENV) .pytest_cache .hypothesis build *.egg-info student course/source \
	       tests/artifacts
	find . $(KEEP) -name __pycache__ -type d -prune -exec rm -rf {} +
	find . $(KEEP) -name .ipynb_checkpoints -type d -prune -exec rm -rf {} +
