"""The wire protocol shared by simulators and policy workers.

Everything that crosses Redis is defined here: key names (`keys`), message fields (`schema`),
the array codec (`codec`), the simulator-side client (`client`) and the worker-side consumer
(`consumer`, `batcher`). Nothing in this package imports the rest of rolloutq.
"""

PROTOCOL_VERSION = 2
