# The two commands of README.md. Each sets up .venv on a fresh machine (Python 3.11) first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test

$(VENV)/.installed: setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test,plot,serving]"
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(PY) -m keras_alexnet.demo

test: setup
	$(PY) -m pytest -q tests
