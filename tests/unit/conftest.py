"""Fixtures of the pure tier (see nat_harness)."""

from tests.unit.nat_harness import demo_config, harness

__all__ = ["demo_config", "harness"]
