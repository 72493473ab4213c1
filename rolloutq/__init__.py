"""rolloutq: closed-loop evaluation of robot policies against simulators, over Redis streams.

Installed, the project's folders are this package's subpackages: `rolloutq.broker` (the wire
protocol and the simulator-side client; all an external Python simulator needs), and
`rolloutq.policy_workers`, `rolloutq.sim_workers`, `rolloutq.monitoring`, `rolloutq.controller`.
"""

import os as _os

# In a source checkout that was not installed (e.g. code copied to a GPU machine and run with
# PYTHONPATH), the subpackages are the top-level folders beside this one.
_root = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
if _os.path.isfile(_os.path.join(_root, "pyproject.toml")) and _os.path.isdir(_os.path.join(_root, "broker")):
    __path__.append(_root)
