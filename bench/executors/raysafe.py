"""The environment every Ray process we start must have, and a guarded ``import ray``.

Why a module of its own: Ray reads several of these variables once, at import time
(``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER`` becomes ``ray_constants.ENABLE_RAY_CLUSTER``), so
they must be in ``os.environ`` before the first ``import ray`` anywhere in the process.
This module therefore never imports Ray at module level; the Ray executor and the
integration tests import it first and call :func:`import_ray`.

What each setting prevents (measured with Ray 2.60, see the scale-out notes):

* ``RAY_USAGE_STATS_ENABLED=0`` and ``RAY_USAGE_STATS_REPORT_URL`` pointing at a closed
  local port: ``ray start`` otherwise sends a one-off usage report off the machine.
* A ``HOME`` holding ``ray_bootstrap_config.yaml`` with ``provider: {type: local}``: the
  head's usage module otherwise probes cloud metadata endpoints (169.254.169.254,
  metadata.google.internal) to guess the provider, even with usage stats disabled.
  Only for a throw-away local head (:func:`local_home`); a cluster launched by
  ``ray up`` has its own bootstrap file in ``~`` and must keep it.
* ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` (loopback clusters only): Ray then uses
  127.0.0.1 as the node address and binds every port to it. Without it Ray maps
  127.0.0.1 to the machine's interface address, binds on all interfaces, and a
  loopback-only driver hangs for minutes. The same setting makes ``ray start --address``
  refuse to add a node, so it is wrong for a real multi-machine cluster.
* ``RAY_AUTH_MODE=disabled`` (loopback clusters only): Ray 2.60 turns token auth on by
  default for new local clusters; a driver without the token then cannot connect. A real
  cluster should keep token auth and give every node and driver the token instead.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from bench.errors import ConfigError

BOOTSTRAP_FILE = "ray_bootstrap_config.yaml"


def safe_ray_env(*, loopback: bool, home: Path | None = None) -> dict[str, str]:
    """Variables for a Ray driver, head or worker.

    ``loopback``: True for a single-machine cluster reachable only on 127.0.0.1 (tests,
    one workstation); False when joining a real cluster (``--address auto`` on a head
    node, or ``host:port``). ``home``: a folder prepared by :func:`local_home`, only for a
    throw-away local head.
    """
    env = {
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_USAGE_STATS_REPORT_URL": "http://127.0.0.1:9/",  # discard port: nothing listens
    }
    if loopback:
        env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
        env["RAY_AUTH_MODE"] = "disabled"
    if home is not None:
        env["HOME"] = str(home)
    return env


def local_home(folder: Path) -> Path:
    """Make ``folder`` a HOME whose bootstrap file says "local provider" (no metadata probes)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / BOOTSTRAP_FILE).write_text("provider: {type: local}\n")
    return folder


def import_ray(*, loopback: bool):
    """``import ray`` after putting :func:`safe_ray_env` into ``os.environ``.

    A missing Ray is a one-line :class:`ConfigError`. Importing Ray earlier in the process
    without these settings cannot be repaired afterwards, so that is a RuntimeError.
    """
    already = "ray" in sys.modules
    os.environ.update(safe_ray_env(loopback=loopback))
    try:
        import ray
        from ray._private import ray_constants
    except ImportError:
        raise ConfigError("the Ray executor needs Ray, which is not installed; pip install -e '.[ray]'") from None
    if already and loopback and ray_constants.ENABLE_RAY_CLUSTER:
        raise RuntimeError("ray was imported before bench.executors.raysafe.import_ray(loopback=True); "
                           "its node address is then not 127.0.0.1 and drivers hang")
    return ray
