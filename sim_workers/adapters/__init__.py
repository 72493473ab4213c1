"""Adapters for external simulators (Isaac Lab, gymnasium, ...), found by `make_task` too."""
