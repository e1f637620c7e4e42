# Two commands on a fresh machine (Python 3.11, CPU):
#   make repro   install everything into .venv (and Debian's chromium when missing), then run the pipeline end to end (dvc repro)
#   make test    the same (the notebooks show the pipeline's outputs; a no-op repro when they are current), then
#                the test suite (unit, integration, notebooks)
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install repro test lock chromium
install: $(STAMP) chromium

# Reinstall when the declared requirements or the lock change; constraints.txt pins every package.
$(STAMP): settings.ini setup.py constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[dev]"
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

# Headless Chromium renders the HTML reports in the tests (Debian's chromium package). Installed only when
# missing and we are root with apt-get; otherwise a one-line message. Idempotent and quiet.
chromium:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing Debian's chromium (headless rendering of the HTML reports)"; \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get install -y -qq chromium >/dev/null 2>&1 || \
		{ apt-get update -qq >/dev/null && apt-get install -y -qq chromium >/dev/null; } || \
		echo "could not install chromium: the report rendering test will fail (apt-get install chromium)"; \
	else \
		echo "chromium not found: install Debian's chromium package (sudo apt-get install chromium) for the report rendering test"; \
	fi

repro: install
	PATH="$(abspath $(BIN)):$$PATH" dvc repro

test: repro
	PATH="$(abspath $(BIN)):$$PATH" python -m pytest

# Refresh the lock after changing requirements in settings.ini (then commit constraints.txt).
lock: install
	$(BIN)/python -m pip freeze --exclude-editable | grep -v '^pip==' > constraints.txt
