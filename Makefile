# Two commands on a fresh machine (Python 3.11, CPU):
#   make repro   install everything into .venv (and Debian's chromium when missing), then run the pipeline end to end (dvc repro)
#   make test    the same (the notebooks show the pipeline's outputs; a no-op repro when they are current), then
#                the test suite (unit, integration, notebooks)
# and for `dvc plots show` without internet:
#   make plots   the pipeline's plots in dvc_plots/index.html, with Vega inlined (make plots-template)
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install repro test lock chromium plots-template plots FORCE
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

# `dvc plots show` offline. DVC's page loads Vega, Vega-Lite and vega-embed from a CDN: without internet it is
# blank. plots-template installs the three from the npm registry (exact versions: the newest of the major
# versions DVC's page asks for, Vega 5, Vega-Lite 5 for the v5 schema DVC writes, vega-embed 6) into a
# git-ignored folder, and writes a git-ignored HTML template with them inlined in <script> tags and DVC's
# {plot_divs} placeholder (no {scripts} placeholder: DVC's CDN <script src> tags are left out). Idempotent: npm
# runs only when the versions change or the folder is missing. `dvc config --local plots.html_template
# plots_template.html` makes a plain `dvc plots show` use it too.
VEGA_VERSIONS  := vega@5.33.1 vega-lite@5.23.0 vega-embed@6.29.0
VEGA_DIR       := .dvc/tmp/vega
PLOTS_TEMPLATE := .dvc/plots_template.html
PLOTS_OUT      ?= dvc_plots

plots-template: $(PLOTS_TEMPLATE)

$(VEGA_DIR)/versions: FORCE
	@test "$$(cat $@ 2>/dev/null)" = "$(VEGA_VERSIONS)" || { \
		echo "installing $(VEGA_VERSIONS) from the npm registry into $(VEGA_DIR)"; \
		rm -rf $(VEGA_DIR) && npm install --prefix $(VEGA_DIR) --no-save --no-package-lock --ignore-scripts \
			--no-audit --no-fund --loglevel=error $(VEGA_VERSIONS) >/dev/null && \
		echo "$(VEGA_VERSIONS)" > $@; }

$(PLOTS_TEMPLATE): $(VEGA_DIR)/versions
	@cd $(VEGA_DIR)/node_modules && node -e "$$PLOTS_TEMPLATE_JS" > $(abspath $@).tmp
	@mv $@.tmp $@ && echo "wrote $@ ($(VEGA_VERSIONS) inlined)"

plots: plots-template
	PATH="$(abspath $(BIN)):$$PATH" dvc plots show --html-template $(abspath $(PLOTS_TEMPLATE)) -o $(PLOTS_OUT)

FORCE:

# Writes the template to stdout, run in node_modules. A library whose text holds one of DVC's placeholders
# or "<!--" would break the page: refused. "</script" inside one is written "<\/script" (same JavaScript).
define PLOTS_TEMPLATE_JS
const fs = require("fs");
const scripts = ["vega", "vega-lite", "vega-embed"].map(name => {
  const js = fs.readFileSync(name + "/build/" + name + ".min.js", "utf8");
  const bad = js.match(/\{(plot_divs|scripts|refresh_tag)\}|<!--/);
  if (bad) throw new Error(name + ".min.js contains " + bad[0] + ": it cannot be inlined in DVC's template");
  const version = JSON.parse(fs.readFileSync(name + "/package.json", "utf8")).version;
  return "<script>/* " + name + "@" + version + " from the npm registry */\n" + js.replace(/<\/script/gi, "<\\/script") + "\n</script>";
});
process.stdout.write(["<!DOCTYPE html>", "<html>", "<head>", "<meta charset=\"utf-8\">", "{refresh_tag}",
  "<title>DVC Plot</title>", ...scripts, "<style>table { border-spacing: 15px; }</style>", "</head>", "<body>",
  "{plot_divs}", "</body>", "</html>", ""].join("\n"));
endef
export PLOTS_TEMPLATE_JS
