"""Xen tier: natvm as a PVH guest of real Xen, nested in QEMU in the router namespace.

QEMU (TCG) boots Xen and the test dom0 of `invoke build --xen-host` (built once per session into
a directory of the session's own, as the image is); the dom0 bridges QEMU's two NICs, taps in the
router namespace exactly as the VM tier's, to natvm's vifs and runs `xl create` on the session
build's xen.cfg as built. Each test file gets a nested boot of its own: one machine for the
whole tier ran for half an hour, and late in that run Xen reported guests' CPUs failing (triple
faults) on nearly every domain it created, in the files that passed alone; a fresh machine per
file costs a boot (about a minute) and keeps what one file leaves out of the next. The whole
serial console (Xen, the dom0 and natvm's hvc0 as `xl console` streams it) goes to a file, and
each test's report carries the console lines that came during it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from image import xenboot, xenhost
from image.build import Build
from tests.support import xenclients, xennetvm
from tests.support.fixtures import services_fixture, topology_fixture
from tests.support.imagebuild import build_image
from tests.support.routers import nested_xen, stats_counter
from tests.support.topology import Attach, Topology
from tests.support.xenclients import Booted

BOOT_TIMEOUT = 300.0  # QEMU start to natvm's READY: about 50 s here
GUEST = "natvm"


class XenNat:
    """The nested boot, as the traffic checks see what forwards (routers.Nat)."""

    kind = "xen"

    def __init__(self, nested: xenboot.NestedXen) -> None:
        self.nested = nested

    def start(self) -> None:
        """Booted by the fixture that made it."""

    def output(self) -> list[str]:
        return self.nested.console.of(GUEST)

    def alive(self) -> bool:
        """QEMU runs, and natvm's last word is READY's (no fatal error or panic after it)."""
        lines = self.output()
        ready = [i for i, line in enumerate(lines) if line.startswith("READY")]
        dead = [i for i, line in enumerate(lines) if "natvm: fatal:" in line or "panic" in line]
        return self.nested.alive() and bool(ready) and ready[-1] > max(dead, default=-1)

    def dropped(self) -> int | None:
        return stats_counter(self.output(), "dropped")

    def stop(self) -> int | None:
        return self.nested.stop()


def report(request: pytest.FixtureRequest, line: str) -> None:
    """A line in the terminal output, past pytest's capture (as the VM tier's accelerator)."""
    plugins = request.config.pluginmanager
    reporter, capture = plugins.get_plugin("terminalreporter"), plugins.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():
            reporter.write_line(line)


@pytest.fixture(scope="session")
def image(tmp_path_factory: pytest.TempPathFactory) -> Build:
    return build_image(tmp_path_factory.mktemp("image"))


@pytest.fixture(scope="session")
def xen_host(tmp_path_factory: pytest.TempPathFactory) -> xenhost.XenHost:
    h = xenhost.XenHost(out=tmp_path_factory.mktemp("xen-host"))
    xenhost.run(h, lambda name, seconds: None)
    return h


topology = topology_fixture("session", "xen-", Attach.TAP)
services = services_fixture("session")


def report_failed_boots(request: pytest.FixtureRequest, booted: list[Booted]) -> None:
    """A line for each client the nested machine failed while it booted (created again)."""
    for client in booted:
        for failure in client.failed_boots:
            report(
                request,
                f"Xen tier: {client.vm.name} created again, the nested machine failed"
                f" its boot ({failure})",
            )


def memory_report(nested: xenboot.NestedXen) -> str:
    """What the nested machine uses: QEMU's resident memory on the host, each domain's
    allocation (xl list), and what the dom0 has left."""
    assert nested.control is not None
    status = Path(f"/proc/{nested.console.proc.pid}/status").read_text()
    rss = next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS"))
    domains = nested.control.run("/usr/lib/xen-4.17/bin/xl", "list").splitlines()[1:]
    allocated = ", ".join(f"{d.split()[0]} {d.split()[2]} MiB" for d in domains)
    probe = "print(open('/proc/meminfo').read())"
    meminfo = nested.control.run("/usr/bin/python3.11", "-c", probe)
    fields = dict(line.split(":", 1) for line in meminfo.splitlines() if ":" in line)
    available = int(fields["MemAvailable"].split()[0]) // 1024
    return (
        f"memory: QEMU RSS {int(rss) // 1024} MiB; {allocated}; dom0 MemAvailable {available} MiB"
    )


@pytest.fixture(scope="module")
def nested(
    topology: Topology,
    image: Build,
    xen_host: xenhost.XenHost,
    tmp_path_factory: pytest.TempPathFactory,
    request: pytest.FixtureRequest,
) -> Iterator[xenboot.NestedXen]:
    work = tmp_path_factory.mktemp("xen")
    with (work / "console.log").open("w") as log:

        def echo(line: xenboot.Line) -> None:
            log.write(f"{line.at:7.1f} {line.source:>5} | {line.text}\n")
            log.flush()

        where = request.node.name  # the test file
        report(request, f"Xen tier console ({where}): {work / 'console.log'}")
        with nested_xen(xen_host.out, topology, work, image.out / "xen.cfg", echo) as booted:
            try:
                split = booted.wait_booted(BOOT_TIMEOUT)
            except xenboot.BootError as error:
                pytest.fail(str(error), pytrace=False)
            request.node.stash[MODULE_CONSOLE] = booted.console  # for the report hook
            report(request, f"Xen tier boot split ({where}): {split}")
            report(request, f"Xen tier {memory_report(booted)}")
            yield booted


@pytest.fixture(scope="module")
def nat(nested: xenboot.NestedXen) -> XenNat:
    return XenNat(nested)


@pytest.fixture(autouse=True)
def console_in_report(request: pytest.FixtureRequest) -> Iterator[None]:
    """Print the console lines (natvm's and the dom0's) that came during the test, into its
    captured output."""
    if "nested" not in request.fixturenames:
        yield
        return
    console = request.getfixturevalue("nested").console
    start = len(console.lines)
    request.node.stash[CONSOLE_AT_START] = (console, start)
    yield
    for line in console.lines[start:]:
        print(f"{line.at:7.1f} {line.source:>5} | {line.text}")


CONSOLE_AT_START = pytest.StashKey[tuple[xenboot.Console, int]]()
MODULE_CONSOLE = pytest.StashKey[xenboot.Console]()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """A check that failed while the nested machine failed a guest (its console says so:
    `xenclients.MACHINE_FAILURES`) or after the machine took a guest down for good earlier in the
    module (its domain gone, `xennetvm.guest_lost_to_machine`), or a module fixture's setup
    that failed after the machine failed any guest of the module's or every boot of a client,
    is reported as an expected failure naming the crash, since it says nothing about natvm;
    every other failure stays a failure."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.when not in ("setup", "call") or not report.failed:
        return
    failure = ""
    if report.when == "call" and CONSOLE_AT_START in item.stash:
        started = item.stash[CONSOLE_AT_START]
        failure = xennetvm.machine_failure(*started) or xennetvm.guest_lost_to_machine(started[0])
    module = item.getparent(pytest.Module)
    if report.when == "setup" and module is not None and MODULE_CONSOLE in module.stash:
        # A module's fixture (set up before the check's own, so the console is the module's)
        # that failed after the machine failed a guest of the module's (natvm crashed under
        # it: xl's next step then fails before xenconsole says natvm's console is gone), or a
        # client whose every boot the machine failed. Its error is raised again at the setup
        # of each later check in the module.
        failure = xennetvm.machine_failure(module.stash[MODULE_CONSOLE], 0)
        error = call.excinfo.value if call.excinfo is not None else None
        if isinstance(error, xenboot.BootError) and xenclients.ALL_BOOTS_FAILED in str(error):
            failure = failure or str(error).splitlines()[0]
    if failure:
        report.outcome = "skipped"
        report.wasxfail = f"{xennetvm.MACHINE_FAILED}: {failure}"
