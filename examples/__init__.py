"""Example services served by `make run`."""
