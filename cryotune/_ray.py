"""Start or join Ray privately and quietly.

Embedded Ray (the default) runs with token authentication on and a fresh random token passed
in the environment, so no token file is written; no dashboard (the web UI); Ray's own logs at
WARNING. Joining a cluster takes its token from ``RAY_AUTH_TOKEN`` or ``RAY_AUTH_TOKEN_PATH``.

What an embedded Ray listens on: its GCS, raylet, object manager, workers, the dashboard
agent (gRPC and its HTTP port, 52365 unless taken) and the runtime-env agent all listen, and
Ray 2.60 has no bind-address setting. It binds them to the node's address, which it takes to
be the machine's outward address on Linux and 127.0.0.1 on macOS and Windows, where
``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER`` (default off there, on on Linux) chooses between the two.
:func:`init_ray` starts embedded Ray with it at ``0``, so every one of those sockets is on
loopback; joining a cluster leaves it alone (a node must be reachable), and so does a user who
set it.

Ray's agents outlive a killed driver by about a minute (they report the raylet's death to the
dead GCS with a fixed 60 s timeout). :func:`init_ray` therefore starts a small watcher
(:mod:`cryotune._reaper`) that ends the processes of the Ray it started when the driver exits
or dies; :func:`shutdown_ray` stops Ray and the watcher's processes at once.

Example::

    from cryotune._ray import init_ray
    init_ray(num_cpus=2)          # embedded, private, quiet
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import secrets
import signal
import subprocess
import sys

from cryotune.errors import BadConfig

log = logging.getLogger(__name__)

# Set before Ray starts, in the driver and (through the environment) in every worker.
QUIET_ENV = {
    "RAY_AIR_NEW_OUTPUT": "0",
    "RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS": "0",
    "RAY_DATA_LOG_LEVEL": "WARNING",
    # The V2 Parquet datasource starts 32 footer-reader actors per execution: on a laptop
    # that costs seconds per epoch (see RAY_NOTES.md); V1 reads the same files.
    "RAY_DATA_USE_DATASOURCE_V2": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
    # Save Tune's experiment state after every event, so a killed driver never reruns a
    # finished trial on --resume.
    "TUNE_GLOBAL_CHECKPOINT_S": "0",
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
}
# "0": the node address is 127.0.0.1 and every Ray server binds loopback (see the docstring)
LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
_reaper: subprocess.Popen | None = None


def prepare_env(*, joining: bool = False) -> None:
    """Set the environment Ray reads at start: quiet output and token authentication.

    Args:
        joining: True when joining an existing cluster, whose token must come from the
            environment; False for embedded Ray, which gets a fresh random token.
    """
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    if os.environ.get("RAY_AUTH_MODE", "token") != "token":
        log.warning("RAY_AUTH_MODE=%s: Ray token authentication is off", os.environ["RAY_AUTH_MODE"])
        return
    os.environ["RAY_AUTH_MODE"] = "token"
    has_token = bool(os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH"))
    if joining and not has_token:
        raise BadConfig(
            "joining a Ray cluster needs its authentication token",
            "RAY_AUTH_TOKEN and RAY_AUTH_TOKEN_PATH are both unset",
            "export RAY_AUTH_TOKEN=<the cluster's token> (or RAY_AUTH_TOKEN_PATH=<a 0600 file>)",
        )
    if not has_token:
        os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)


def init_ray(
    address: str | None = None,
    *,
    num_cpus: int | None = None,
    num_gpus: int | None = None,
    verbose: bool = False,
):
    """Start embedded Ray, or join the cluster at ``address``; no-op when already running.

    Args:
        address: a cluster address (``ray://`` or ``host:port``); None starts embedded Ray,
            unless ``RAY_ADDRESS`` is set.
        num_cpus: CPUs for embedded Ray (default: this machine's).
        num_gpus: GPUs for embedded Ray (default: this machine's).
        verbose: keep Ray's own INFO logs and worker output.

    Returns:
        The ``ray`` module's context object from ``ray.init``.
    """
    address = address or os.environ.get("RAY_ADDRESS") or None
    already_imported = "ray" in sys.modules
    prepare_env(joining=address is not None)
    import ray

    if already_imported and not ray.is_initialized():
        _reload_ray_auth_config()

    if ray.is_initialized():
        return None
    kwargs = dict(
        logging_level=logging.INFO if verbose else logging.WARNING,
        log_to_driver=verbose,
        configure_logging=True,
    )
    if address is None:
        with _loopback(), _keep_sigterm_handler():
            context = ray.init(
                num_cpus=num_cpus,
                num_gpus=num_gpus,
                include_dashboard=False,
                **kwargs,
            )
        _start_reaper()
        return context
    with _keep_sigterm_handler():
        return ray.init(address=address, **kwargs)


@contextlib.contextmanager
def _keep_sigterm_handler():
    """Keep this program's own SIGTERM handler across ``ray.init``, which installs a native
    one that aborts the process (the command line's handler unwinds like Ctrl-C instead)."""
    try:
        previous = signal.getsignal(signal.SIGTERM)
    except ValueError:  # pragma: no cover - not the main interpreter
        previous = None
    try:
        yield
    finally:
        if callable(previous):
            with contextlib.suppress(ValueError):  # off the main thread: handlers stay
                signal.signal(signal.SIGTERM, previous)


def shutdown_ray() -> None:
    """Stop Ray (when running) and end whatever is left of the embedded Ray this process
    started: its agents and workers, by the pids :mod:`cryotune._reaper` noted."""
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()
    _stop_reaper()


def _ray_roots() -> list[int]:
    """Pids of the processes the embedded Ray node started (GCS, raylet, log monitor...)."""
    try:
        from ray._private import worker

        node = worker._global_node
        return sorted({info.process.pid for infos in node.all_processes.values()
                       for info in infos if info.process is not None})
    except (ImportError, AttributeError):  # a Ray without these internals: nothing to watch
        log.debug("the processes of the embedded Ray are not known")
        return []


def _start_reaper() -> None:
    global _reaper
    if sys.platform != "linux" or _reaper is not None:
        return
    roots = _ray_roots()
    if not roots:
        return
    _reaper = subprocess.Popen(
        [sys.executable, "-m", "cryotune._reaper", *map(str, roots)],
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)
    atexit.register(_stop_reaper)


def _stop_reaper(timeout: float = 10.0) -> None:
    """Close the watcher's pipe (it then ends what is left) and wait for it."""
    global _reaper
    reaper, _reaper = _reaper, None
    if reaper is None:
        return
    if reaper.stdin is not None:
        reaper.stdin.close()
    try:
        reaper.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        log.warning("the watcher of embedded Ray (pid %d) has not ended", reaper.pid)


@contextlib.contextmanager
def _loopback():
    """Start embedded Ray in Ray's single-machine mode (node address 127.0.0.1), unless the
    user set :data:`LOOPBACK_ENV`. Ray reads it once, at import, into a constant; the
    environment is restored afterwards so that programs this process starts later (a
    ``ray start`` of a real cluster) do not inherit it. Ray's own processes keep it."""
    if LOOPBACK_ENV in os.environ:
        yield
        return
    try:
        from ray._private import ray_constants
    except ImportError:  # pragma: no cover - Ray is a core dependency
        ray_constants = None
    saved = getattr(ray_constants, "ENABLE_RAY_CLUSTER", None)
    os.environ[LOOPBACK_ENV] = "0"
    if saved is not None:
        ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        os.environ.pop(LOOPBACK_ENV, None)
        if saved is not None:
            ray_constants.ENABLE_RAY_CLUSTER = saved


def _reload_ray_auth_config() -> None:
    """Make an already imported Ray re-read RAY_AUTH_MODE and the token.

    Ray reads its config once, when ``ray._raylet`` is first imported; a program that imported
    Ray before :func:`prepare_env` ran would otherwise start with authentication off.
    """
    try:
        from ray._raylet import AuthenticationTokenLoader, Config

        Config.initialize("")
        AuthenticationTokenLoader.instance().reset_cache()
    except (ImportError, AttributeError):  # a Ray without these internals: nothing cached
        log.debug("Ray auth config reload not available")
