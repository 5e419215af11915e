"""Fixture factories: a tier's conftest, or a module that needs namespaces of its own, makes its
``topology`` and ``services`` fixtures with one line each, differing only in what it passes.

A fixture here is made, not defined: a module binds what a factory returns to a name, and pytest
finds it there under the fixture's name, at the scope the module chose.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

import pytest

from tests.support.services import Services, running_services
from tests.support.topology import Attach, Topology, session_prefix, topology

Scope = Literal["session", "module"]


def topology_fixture(scope: Scope, suffix: str, attach: Attach, offloads: bool = False) -> object:
    """A ``topology`` fixture: namespaces named ``session_prefix() + suffix``, built once per
    ``scope`` and removed after it (see ``topology.build`` for ``attach`` and ``offloads``)."""

    @pytest.fixture(scope=scope, name="topology")
    def built(required_tools: None) -> Iterator[Topology]:
        """Test namespaces wired to the appliance's NICs (see tests.support.topology)."""
        with topology(session_prefix() + suffix, attach, offloads) as topo:
            yield topo

    return built


def services_fixture(scope: Scope) -> object:
    """A ``services`` fixture: the servers of ``services.py`` in the ``topology`` fixture's
    namespaces, started once per ``scope``."""

    @pytest.fixture(scope=scope, name="services")
    def started(topology: Topology, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
        """The servers of tests.support.services, listening in the topology's namespaces."""
        with running_services(topology, tmp_path_factory.mktemp("services")) as servers:
            yield servers

    return started
