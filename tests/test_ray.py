"""Embedded Ray as cryotune starts it: on loopback, and gone with the driver however it ends."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from proctree import alive, descendants, listening

pytestmark = pytest.mark.timeout(180)
DRIVER = ("from cryotune._ray import init_ray; init_ray(num_cpus=1); import ray, time; "
          "ray.get(ray.remote(lambda: 1).remote()); print('up', flush=True); time.sleep(300)")


def test_a_killed_driver_leaves_no_ray_process_behind():
    driver = subprocess.Popen([sys.executable, "-c", DRIVER], stdout=subprocess.PIPE, text=True,
                              start_new_session=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    tree: list[int] = []
    try:
        assert driver.stdout.readline().strip() == "up"
        time.sleep(2)  # the agents are up
        tree = descendants(driver.pid)
        names = [open(f"/proc/{p}/cmdline").read() for p in tree if alive(p)]
        assert any("DashboardAgent" in n for n in names) and any("raylet" in n for n in names)
        assert all(a in ("127.0.0.1", "::1") for a, _, _ in listening(tree + [driver.pid]))
        os.kill(driver.pid, signal.SIGKILL)  # only the driver
        driver.wait(timeout=30)
        deadline = time.monotonic() + 10  # Ray's agents alone linger about 60 s
        while time.monotonic() < deadline and any(alive(p) for p in tree):
            time.sleep(0.2)
        left = [p for p in tree if alive(p)]
    finally:
        for pid in [driver.pid, *tree]:
            if alive(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
    assert not left, f"alive 10 s after the driver was killed: {left}"
