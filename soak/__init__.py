"""``invoke soak``: the appliance under mixed real traffic for minutes to hours, watched.

Theory of operation
-------------------
``run.soak`` starts the appliance as a host process (``routers.HostAppliance``) in the test
topology's router namespace, with the test servers of ``tests.support.services`` on the WAN
side, and sends mixed traffic through it from the LAN hosts until the time is up: iperf3 TCP and
UDP in turns at capped rates, short HTTP connections (curl, one connection per request), DNS
queries (dig against dnsmasq, a new source port each) and a steady ping. Every few seconds it
samples the process: RSS and CPU time from ``/proc/<pid>``, the flow count and counters from its
last stats line. ``judge.failures`` turns the samples into a verdict (RSS growth after the warm-up,
counters that clean traffic never moves, traffic that never got through).

A package beside ``bench/`` for the same reason: a task that drives the test equipment of
``tests.support``, which needs root, pyroute2 and scapy; ``judge`` is its pure part.

Rules
-----
- Modest rates (about a tenth of a core for the appliance): the soak looks for leaks and faults
  over time, not for speed, and shares the machine.
- Every subprocess has a timeout; ``Topology.destroy`` ends every process started in the
  namespaces, on success, failure or Ctrl-C alike.
"""
