"""A loopback-only Ray cluster (a head plus N worker nodes) in one process tree, for tests.

Run by ``services.ray_head`` as a subprocess; prints ``READY <address>`` when every node
has registered, then blocks until SIGTERM.

Why not ``ray start --head`` plus ``ray start --address``: a loopback-only cluster needs
``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` (else Ray binds every interface and uses the
machine's address, see ``bench.executors.raysafe``), and with that setting ``ray start --address``
refuses to add a node ("Multi-node Ray clusters are not supported"). ``ray.cluster_utils``
starts the same head and node processes as ``ray start`` without that check, and every
port stays on 127.0.0.1. The caller must put ``bench.executors.raysafe.safe_ray_env`` in our
environment (it has to be there before ``import ray``).
"""
from __future__ import annotations

import argparse
import signal
import sys


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True, help="GCS port of the head")
    parser.add_argument("--num-cpus", type=int, required=True, help="CPUs of the head node")
    parser.add_argument("--worker-nodes", type=int, default=0)
    parser.add_argument("--worker-cpus", type=int, default=1)
    parser.add_argument("--temp-dir", required=True)
    args = parser.parse_args()

    from ray._private import ray_constants
    from ray.cluster_utils import Cluster

    if ray_constants.ENABLE_RAY_CLUSTER:
        sys.exit("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 is not set: Ray would bind every interface")
    common = {"temp_dir": args.temp_dir, "include_dashboard": False, "node_ip_address": "127.0.0.1"}
    cluster = Cluster(initialize_head=True,
                      head_node_args={**common, "gcs_server_port": args.port, "num_cpus": args.num_cpus})
    for _ in range(args.worker_nodes):
        cluster.add_node(**common, num_cpus=args.worker_cpus)
    print("READY", cluster.address, flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # exit -> atexit stops the nodes gracefully
    while True:
        signal.pause()


if __name__ == "__main__":
    main()
