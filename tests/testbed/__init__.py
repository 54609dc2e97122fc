"""The multi-host testbed the end-to-end tests run on (see testbed.py)."""

from .testbed import DOCKER, FRESH, UNSUPPORTED, Host, Testbed, TestbedError, remove_leftovers, remove_orphans

__all__ = ["DOCKER", "FRESH", "UNSUPPORTED", "Host", "Testbed", "TestbedError", "remove_leftovers", "remove_orphans"]
