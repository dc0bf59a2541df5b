"""Start or join Ray privately and quietly.

Embedded Ray (the default) runs with token authentication on and a fresh random token passed
in the environment, so no token file is written; no dashboard; Ray's own logs at WARNING.
Joining a cluster takes its token from ``RAY_AUTH_TOKEN`` or ``RAY_AUTH_TOKEN_PATH``.

Example::

    from cryotune._ray import init_ray
    init_ray(num_cpus=2)          # embedded, private, quiet
"""

from __future__ import annotations

import logging
import os
import secrets
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
        return ray.init(
            num_cpus=num_cpus,
            num_gpus=num_gpus,
            include_dashboard=False,
            **kwargs,
        )
    return ray.init(address=address, **kwargs)


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
