"""`dvc plots show` without internet. `make plots-template` installs Vega, Vega-Lite and vega-embed from the npm
registry and inlines them in an HTML template; the page `dvc plots show --html-template` writes with it loads no
script from the network, and headless Chromium with the network cut draws every Vega plot of dvc.yaml. The
control: DVC's default page (its scripts from a CDN) stays blank under the same flags."""
import re
import subprocess

import pytest

from tests.conftest import (CHROMIUM_FLAGS, CHROMIUM_OFFLINE, ROOT, chromium, load_yaml, plot_coloured, run,
                            screenshot)

TEMPLATE = ROOT / ".dvc/plots_template.html"  # the Makefile's PLOTS_TEMPLATE
OFFLINE = [*CHROMIUM_OFFLINE, "--virtual-time-budget=10000"]  # and the page's scripts may finish before the shot
SCRIPT_SRC = re.compile(r"<script[^>]*\ssrc\s*=", re.I)


@pytest.fixture(scope="module")
def vega_plots() -> list[str]:
    "The ids of dvc.yaml's Vega plots (its image folder, plots/shap, needs no script to show: left out)."
    plots = [next(iter(p.items())) for p in load_yaml(ROOT / "dvc.yaml")["plots"] if isinstance(p, dict)]
    missing = [f for _, spec in plots for f in spec["y"] if not (ROOT / f).is_file()]
    if missing: pytest.fail(f"no plot data {missing}: `dvc repro` writes it")
    return [name for name, _ in plots]


@pytest.fixture(scope="module")
def pages(vega_plots, tmp_path_factory):
    "The Vega plots' page written with the offline template, and DVC's default page of the same plots."
    run(["make", "-s", "plots-template"], ROOT)  # a no-op when the template is current
    out = tmp_path_factory.mktemp("plots")
    run(["dvc", "plots", "show", "--html-template", str(TEMPLATE), "-o", str(out / "offline"), *vega_plots], ROOT)
    run(["dvc", "plots", "show", "-o", str(out / "default"), *vega_plots], ROOT)
    return out / "offline/index.html", out / "default/index.html"


def test_template_inlines_the_pinned_libraries(pages):
    versions = re.search(r"^VEGA_VERSIONS\s*:=(.*)$", (ROOT / "Makefile").read_text(), re.M).group(1).split()
    assert [v.split("@")[0] for v in versions] == ["vega", "vega-lite", "vega-embed"]
    template = TEMPLATE.read_text()
    for v in versions:
        assert f"<script>/* {v} from the npm registry */" in template, v
    assert "{plot_divs}" in template and "{scripts}" not in template and not SCRIPT_SRC.search(template)


def test_page_loads_no_script_from_the_network(pages):
    offline, default = (p.read_text() for p in pages)
    assert re.search(r'<script src="https://', default)  # DVC's own page does: what the template replaces
    assert not SCRIPT_SRC.search(offline)
    assert not re.search(r'<(link|img|iframe)[^>]*\s(href|src)\s*=\s*"https?:', offline, re.I)
    assert offline.count("vegaEmbed(") == default.count("vegaEmbed(") > 0


def test_offline_page_draws_every_plot(pages, vega_plots, tmp_path):
    page = screenshot(pages[0], tmp_path, *OFFLINE)
    assert plot_coloured(page) > 3000 * len(vega_plots), plot_coloured(page)  # measured: 53,000 for 7 plots
    dom = subprocess.run([chromium(), *CHROMIUM_FLAGS, *OFFLINE, f"--user-data-dir={tmp_path / 'dom'}", "--dump-dom",
                          pages[0].as_uri()], capture_output=True, text=True, timeout=120, check=True).stdout
    assert dom.count("<canvas") == len(vega_plots), dom.count("<canvas")  # vega-embed drew into each plot's div


def test_default_page_is_blank_offline(pages, tmp_path):
    "The control: the same flags leave DVC's default page (scripts from a CDN) without a single plot."
    page = screenshot(pages[1], tmp_path, *OFFLINE)
    assert plot_coloured(page) < 100, plot_coloured(page)
