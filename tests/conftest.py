"""Shared fixtures: one real Ray instance per test session, tiny images, temporary folders."""

from __future__ import annotations

import os

import pytest

# Tests run on 2-core CI machines: keep every test process to one torch thread and make Ray
# private and quiet before anything imports it.
os.environ.setdefault("OMP_NUM_THREADS", "1")
from cryotune._ray import prepare_env  # noqa: E402

prepare_env()


@pytest.fixture(scope="session")
def ray_session():
    """A real local Ray with 2 CPUs, shared by every test that asks for it."""
    import ray

    from cryotune._ray import init_ray

    init_ray(num_cpus=2)
    yield ray
    ray.shutdown()
