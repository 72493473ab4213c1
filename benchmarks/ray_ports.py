"""Which interfaces a local Ray (as `rolloutq eval` starts it) listens on.

    PYTHONPATH=. python benchmarks/ray_ports.py

Starts Ray with the arguments controller/eval.py uses locally (include_dashboard=False,
_node_ip_address="127.0.0.1") plus Serve's HTTP proxy on 127.0.0.1, then lists the listening
sockets of this driver's child processes (psutil). Prints JSON; see docs/RELIABILITY.md, Access.
"""

from __future__ import annotations

import json
import os
import time

import psutil
import ray
from ray import serve
from rolloutq.broker.embedded import free_port


def main() -> None:
    ray.init(num_cpus=1, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": free_port()})
    time.sleep(2)
    pids = {os.getpid()} | {c.pid for c in psutil.Process().children(recursive=True)}
    rows = set()
    for c in psutil.net_connections(kind="inet"):
        if c.status == psutil.CONN_LISTEN and c.pid in pids:
            rows.add((c.laddr.ip, psutil.Process(c.pid).name()))
    loopback = {"127.0.0.1", "::1"}
    print(json.dumps({
        "ray": ray.__version__,
        "node_ip": ray.util.get_node_ip_address(),
        "listening": sorted(f"{ip} {name}" for ip, name in rows),
        "not_loopback": sorted(f"{ip} {name}" for ip, name in rows if ip not in loopback),
    }, indent=1))
    serve.shutdown()
    ray.shutdown()


if __name__ == "__main__":
    main()
