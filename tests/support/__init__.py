"""Test equipment: the namespaces and what forwards between them, their servers, the traffic
checks, image builds and the fixtures made from them. The namespace and VM tiers use it, and so
does ``invoke bench`` (``bench/``), which measures through the same topology.
"""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "ops-config.json"  # what every tier's appliance runs with
