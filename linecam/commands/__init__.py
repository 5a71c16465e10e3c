"""The ``linecam`` subcommands, one module per area: the top layer, over everything else.

Each module has a ``register(subparsers)`` that defines its arguments and imports nothing heavy (torch, zmq)
until a handler runs, so ``linecam gate`` starts as fast as a process restarted by systemd needs.
"""
