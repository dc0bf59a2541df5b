"""Shared fixtures: one real Ray instance per test session, tiny images, temporary folders,
and a tiny simulated store with a sweep spec builder around it (sweeps and runs)."""

from __future__ import annotations

import os

import pytest

# Tests run on 2-core CI machines: keep every test process to one torch thread and make Ray
# private and quiet before anything imports it.
os.environ.setdefault("OMP_NUM_THREADS", "1")
from cryotune._ray import prepare_env  # noqa: E402
from cryotune.sweep.spec import spec_from_mapping  # noqa: E402

prepare_env()


@pytest.fixture(scope="session")
def ray_session():
    """A real local Ray with 2 CPUs, shared by every test that asks for it."""
    import ray

    from cryotune._ray import init_ray

    init_ray(num_cpus=2)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def chromium():
    """Render a local HTML file in real headless Chromium (Debian's `chromium`).

    Returns a function ``render(html_path, tmp_dir) -> dict`` with the screenshot as an array,
    the page's console messages, and the network requests the page itself started (browser
    housekeeping requests, whose initiator is "not an origin", are not the page's).
    """
    import json
    import shutil
    import subprocess

    exe = shutil.which("chromium")
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed: .ci/run must install Debian's chromium")
        pytest.skip("chromium is not installed (apt-get install chromium)")

    def render(html_path, tmp_dir, size=(1200, 2400)):
        from skimage.io import imread

        shot, netlog = tmp_dir / "shot.png", tmp_dir / "netlog.json"
        cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--no-first-run", "--disable-sync", "--disable-quic",
               f"--user-data-dir={tmp_dir / 'profile'}", f"--log-net-log={netlog}",
               "--enable-logging=stderr", "--v=0", f"--window-size={size[0]},{size[1]}",
               f"--screenshot={shot}", html_path.resolve().as_uri()]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert shot.exists(), proc.stderr[-2000:]
        console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]
        log = json.loads(netlog.read_text())
        names = {v: k for k, v in log["constants"]["logEventTypes"].items()}
        requests = [p["url"] for e in log["events"]
                    if names.get(e["type"]) == "URL_REQUEST_START_JOB"
                    and "url" in (p := e.get("params", {}))
                    and p.get("initiator") != "not an origin"
                    and not p["url"].startswith(("file:", "data:"))]
        return {"screenshot": imread(shot), "console": console, "requests": requests}

    return render


@pytest.fixture(scope="session")
def toy_store(tmp_path_factory):
    """16 px pairs, 96 train / 16 test, in shards of 48 rows (so epochs cross shards)."""
    from cryotune.data.simulate import simulate

    return simulate(tmp_path_factory.mktemp("data") / "toy", size=16, n_train=96, n_test=16,
                    snr=0.5, seed=0, shard_rows=48)


@pytest.fixture
def make_spec(tmp_path, toy_store):
    """A spec on the toy store with narrow models, stored under tmp_path; keys override."""

    def make(**changes):
        raw = {
            "name": "t",
            "dataset": str(toy_store),
            "methods": ["l1_ae"],
            "epochs": 2,
            "train": {"width": 4, "depth": 1, "batch_size": 16, "gallery": 4},
            "storage": str(tmp_path / "studies"),
        }
        raw.update(changes)
        return spec_from_mapping(raw)

    return make
