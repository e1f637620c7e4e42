# Two commands on a fresh machine (Python 3.11, CPU):
#   make repro   install everything into .venv, then run the pipeline end to end (dvc repro)
#   make test    install everything into .venv, then run the test suite (unit, integration, notebooks)
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install repro test lock
install: $(STAMP)

# Reinstall when the declared requirements or the lock change; constraints.txt pins every package.
$(STAMP): settings.ini setup.py constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[dev]"
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

repro: install
	PATH="$(abspath $(BIN)):$$PATH" dvc repro

test: install
	PATH="$(abspath $(BIN)):$$PATH" python -m pytest

# Refresh the lock after changing requirements in settings.ini (then commit constraints.txt).
lock: install
	$(BIN)/python -m pip freeze --exclude-editable | grep -v '^pip==' > constraints.txt
