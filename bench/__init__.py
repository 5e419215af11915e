"""``invoke bench``: natvm against Linux's own NAT, side by side, in network namespaces.

Theory of operation
-------------------
``run.bench`` builds the test topology once (``tests.support.topology``), then for each run puts
Linux's NAT (``routers.KernelNat``) and natvm (``routers.HostAppliance``) in the router namespace
in turn, on the same veth pairs with the same offload settings, and measures the same workloads
through both (``workloads.py``). The order of the two alternates from run to run, so a drift of
the machine does not favour one side. ``report.py`` pairs the figures run by run, prints
natvm/kernel ratios with min/median/max, and writes everything to ``build/bench/<time>.json``.
With ``--vm`` (``vm.py``) the two NATs are VMs on the VM tier's taps instead: natvm's image and
the kernel-NAT reference image, each booted fresh per phase with the same QEMU settings.

A package of its own, beside ``tests/`` and not in it, so that ``invoke bench`` imports it as
any task imports ``image``; and not in ``image/``, the product's host side, because it measures
through the test equipment of ``tests.support`` (namespaces, the NATs, the servers), which
needs root, pyroute2 and scapy.

Rules
-----
- A benchmark, not a test: a workload that fails records ``None`` and why, and the others go on.
- Every loop is bounded in count and in time; every subprocess has a timeout.
- Traffic stays between the test namespaces; ``Topology.destroy`` removes them and ends every
  process started in them, on success, failure, Ctrl-C or SIGTERM alike.
"""
