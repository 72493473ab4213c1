"""Simulator side: adapters behind one interface, the closed-loop runner, and sim processes/actors."""
