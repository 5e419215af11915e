"""natvm's tasks: thin wrappers over image/ and pytest (`invoke --list`)."""

import os
import shlex
import shutil
import sys
import time
from pathlib import Path

from invoke.context import Context
from invoke.exceptions import Exit
from invoke.tasks import task

from appliance.config import ConfigError, apply_overrides, load_config
from image import build as image_build
from image import demo, deploy, qemu, xendemo, xenhost
from image import lock as image_lock
from image.errors import ImageError

ROOT = Path(__file__).resolve().parent
CONFIG = ROOT / "ops-config.json"


def die(error: Exception, debug: bool) -> Exit:
    """The one way errors reach users: one line and a hint, a traceback only with --debug."""
    if debug:
        raise error
    if isinstance(error, ImageError):
        hint = f"\n  hint: {error.hint}" if error.hint else ""
        return Exit(f"natvm: error: {error.message}{hint}", 1)
    return Exit(f"natvm: error: {error}", 1)


def progress(name: str, seconds: float) -> None:
    print(f"  {name:<12} {seconds:6.2f} s", flush=True)


def kernel_progress(line: str) -> None:
    print(f"  kernel: {line}", flush=True)


def do_build(config: Path, debug: bool, reference: bool = False) -> image_build.Build:
    started = time.monotonic()
    out = image_build.REFERENCE_OUTPUT if reference else image_build.OUTPUT
    what = "the kernel-NAT reference image" if reference else "natvm"
    print(f"building {what} into {out}", flush=True)
    try:
        vm = deploy.deployment(load_config(config), out)
        b = image_build.Build(config, vm, out=out, reference=reference, say=kernel_progress)
        image_build.run(b, progress)
    except (ImageError, ConfigError) as error:
        raise die(error, debug) from None
    disk, size = ((b.out / name).stat().st_size for name in (qemu.ROOT_FILE, "initramfs"))
    assert b.kernel is not None
    kernel_size = b.kernel.vmlinuz.stat().st_size
    print(
        f"built in {time.monotonic() - started:.1f} s: vmlinuz {kernel_size / 2**20:.2f} MiB "
        f"(kernel {b.kernel.release}{', cached' if b.kernel.cached else ''}), "
        f"{qemu.ROOT_FILE} {disk / 2**20:.2f} MiB (QEMU), initramfs {size / 2**20:.2f} MiB (Xen)",
        flush=True,
    )
    return b


def do_xen_host_build(debug: bool) -> xenhost.XenHost:
    started = time.monotonic()
    print(f"building the test dom0 (Xen tier; not the product) into {xenhost.OUTPUT}", flush=True)
    h = xenhost.XenHost()
    try:
        xenhost.run(h, progress)
    except ImageError as error:
        raise die(error, debug) from None
    print(
        f"built in {time.monotonic() - started:.1f} s: Xen {h.hypervisor}, "
        f"dom0 kernel {h.kernel_release}",
        flush=True,
    )
    return h


@task(
    help={
        "config": "ops-config.json to bake in",
        "debug": "show tracebacks",
        "reference": "build the kernel-NAT reference image (nft) into build/reference/ instead",
        "xen-host": "build the Xen tier's test dom0 (Xen, a dom0 kernel and root) into "
        "build/xen-host/ instead",
    }
)
def build(
    c: Context,
    config: str = str(CONFIG),
    debug: bool = False,
    reference: bool = False,
    xen_host: bool = False,
) -> None:
    """Build build/vmlinuz, build/root.qcow2 (QEMU), build/initramfs (Xen) and the deployment
    files."""
    if xen_host:
        do_xen_host_build(debug)
        return
    do_build(Path(config), debug, reference)


@task(help={"debug": "show tracebacks"})
def lock(c: Context, debug: bool = False) -> None:
    """Re-pin the kernel and Python packages to apt's current versions (image/packages.lock)."""
    try:
        for pin in image_lock.refresh():
            print(f"  {pin.name} {pin.version}")
    except ImageError as error:
        raise die(error, debug) from None
    print(f"wrote {image_lock.LOCK_FILE.relative_to(ROOT)}; rebuild and review the diff")


@task
def clean(c: Context) -> None:
    """Remove build/ (the package cache in ~/.cache/natvm stays)."""
    shutil.rmtree(image_build.OUTPUT, ignore_errors=True)


@task(
    help={
        "config": "ops-config.json to bake in",
        "memory": "guest memory in MiB (default: RunConfig.Memory)",
        "cpus": "guest CPUs (default: RunConfig.CPUs)",
        "taps": "use existing taps WAN,LAN instead of the demo namespaces",
        "bridged": "attach to the bridges named in RunConfig.Nics[].BridgeName",
        "show_command": "print the QEMU command line and exit",
        "debug": "show tracebacks",
        "xen": "boot natvm under Xen nested in QEMU (the test dom0 of build/xen-host/, "
        "xl create build/xen.cfg) between the demo namespaces",
    }
)
def run(
    c: Context,
    config: str = str(CONFIG),
    memory: int = 0,
    cpus: int = 0,
    taps: str = "",
    bridged: bool = False,
    show_command: bool = False,
    debug: bool = False,
    xen: bool = False,
) -> None:
    """Boot natvm under QEMU between a LAN and a WAN namespace and show NAT working."""
    path = Path(config)
    if xen:
        if taps or bridged or memory or cpus:
            message = "--xen boots build/xen.cfg as built, between the demo's namespaces"
            raise die(ImageError(message, "drop --taps, --bridged, --memory and --cpus"), debug)
        do_xen_run(path, debug, show_command)
        return
    try:
        options = demo.options(path, load_config(path), memory, cpus, taps, bridged)
        if show_command:
            print(demo.show_command(options, image_build.OUTPUT))
            return
        do_build(path, debug)
        demo.run_demo(options, image_build.OUTPUT)
    except (ImageError, ConfigError) as error:
        raise die(error, debug) from None


def do_xen_run(config: Path, debug: bool, show_command: bool) -> None:
    if show_command:
        print(xendemo.show_command(xenhost.OUTPUT))
        return
    try:
        hosts = demo.addresses(load_config(config))
        do_build(config, debug)
        do_xen_host_build(debug)
        xendemo.run_demo(image_build.OUTPUT, xenhost.OUTPUT, hosts)
    except (ImageError, ConfigError) as error:
        raise die(error, debug) from None


@task(help={"fast": "only the unit tests and the linters (no root, no namespaces, no VM)"})
def test(c: Context, fast: bool = False) -> None:
    """Run ruff, mypy and the tests (unit, netns, vm and xen tiers)."""
    py = shlex.quote(sys.executable)
    c.run(f"{py} -m ruff check .")
    c.run(f"{py} -m ruff format --check .")
    c.run(f"{py} -m mypy")
    c.run(f"{py} -m pytest" + (" -m 'not netns and not vm and not xen'" if fast else ""), pty=True)


@task(
    help={
        "runs": "alternating kernel/natvm runs (default 3); ratios are paired run by run",
        "quick": "a short smoke run: one run, shorter measurements",
        "workloads": "comma-separated subset of table,ping,tcp1,tcp4,udp64,udp1400,conn",
        "offloads": "checksum offload, TSO and GSO on the hosts' veths and GRO on the router's, "
        "for the kernel and natvm alike (Linux's defaults; default on; host mode only). "
        "--no-offloads turns them all off: every NAT then handles MTU-sized frames one by one",
        "busy-poll": "natvm's busy_poll_us: microseconds it keeps polling after a frame "
        "instead of sleeping (default 0); e.g. 20000 with --workloads ping",
        "vm": "compare inside the VM instead: natvm's image vs the kernel-NAT reference image "
        "(builds both), on taps; under TCG the figures are emulated",
    }
)
def bench(
    c: Context,
    runs: int = 3,
    quick: bool = False,
    workloads: str = "",
    offloads: bool = True,
    busy_poll: int = 0,
    vm: bool = False,
) -> None:
    """Measure natvm against Linux's NAT in namespaces (root); writes build/bench/*.json."""
    from bench import run as bench_run  # here, not above: pyroute2 and scapy slow every task

    try:
        options = bench_run.options(runs, quick, workloads, offloads, busy_poll, vm)
    except bench_run.SetupError as error:
        raise die(error, debug=False) from None
    try:  # natvm's own check of busy_poll_us, before any namespace exists
        apply_overrides(load_config(CONFIG), {"natvm.busy_poll_us": [str(busy_poll)]})
    except ConfigError as error:
        raise die(error, debug=False) from None
    if vm:  # both images, from the same sources and lock
        do_build(CONFIG, debug=False)
        do_build(CONFIG, debug=False, reference=True)
    bench_run.bench(options)


@task(
    help={
        "boots": "boots of each build, in turns (default 5)",
        "baseline": "another build's output folder (e.g. a worktree's build/) to boot side by side",
        "memory": "guest memory in MiB (default 128)",
    }
)
def bench_boot(c: Context, boots: int = 5, baseline: str = "", memory: int = 128) -> None:
    """Boot time: QEMU start to READY and its split, medians, against a baseline build (root)."""
    from bench import boot  # here, not above: pyroute2 and scapy slow every task

    try:
        demo.preflight("invoke bench-boot")
        builds = {"this build": do_build(CONFIG, debug=False).out}
        if baseline:
            folder = Path(baseline).resolve()
            disks = (folder / "vmlinuz", qemu.root_disk(folder))
            missing = [path.name for path in disks if not path.is_file()]
            if missing:
                hint = "give another tree's build/, made there by `invoke build`"
                raise ImageError(f"--baseline {baseline}: no {' or '.join(missing)} there", hint)
            builds["baseline"] = folder
        print("\n".join(boot.run(builds, max(1, boots), memory)))
    except (ImageError, RuntimeError) as error:
        raise die(error, debug=False) from None


@task(
    help={
        "minutes": "how long to load the appliance (at least 2: the first minute is the warm-up)",
        "interval": "seconds between samples (default 5)",
    }
)
def soak(c: Context, minutes: int = 10, interval: int = 5) -> None:
    """Mixed real traffic through natvm in namespaces for N minutes, sampled (root).

    Fails if RSS grows more than 5 % after the first minute or a counter that clean traffic
    never moves does (soak/judge.py)."""
    from soak import run as soak_run  # here, not above: pyroute2 and scapy slow every task

    if minutes < 2 or interval <= 0 or interval > 60:
        raise Exit("natvm: error: --minutes must be at least 2 and --interval 0-60 s", 1)
    missing = [tool for tool in soak_run.TOOLS if shutil.which(tool) is None]
    if os.geteuid() != 0 or missing:
        raise Exit(f"natvm: error: the soak needs root and {', '.join(soak_run.TOOLS)}", 1)
    print(f"soak: {minutes:g} min of mixed traffic through natvm, a sample every {interval:g} s")
    with soak_run.soak_topology() as (topo, services):
        report = soak_run.soak_through(topo, services, minutes, interval, print)
    for line in soak_run.summary(report, soak_run.WARMUP):
        print(line)
    if report.failures:
        raise Exit("soak: FAILED: " + "; ".join(report.failures), 1)
    print("soak: passed")


@task(
    help={
        "frames": "frames to hand the engine (default 10 million)",
        "seed": "the campaign's seed (default 1)",
        "engine": "atheris: coverage-guided by libFuzzer (default); random: seeded, stdlib only",
    }
)
def fuzz(c: Context, frames: int = 10_000_000, seed: int = 1, engine: str = "atheris") -> None:
    """Fuzz the pure engine: generated and mutated frames, each checked (fuzz/).

    Prints frames/s, then the coverage of appliance/ that the inputs reached."""
    py, work = shlex.quote(sys.executable), image_build.OUTPUT / "fuzz"
    with c.cd(str(ROOT)):
        run = c.run(
            f"{py} -m fuzz run --engine {shlex.quote(engine)} --frames {frames} --seed {seed} "
            f"--work {shlex.quote(str(work))}",
            warn=True,
        )
        if run is None or run.failed:
            raise Exit("natvm: error: the fuzzer stopped on a finding (above); see build/fuzz/", 1)
        extra = "" if engine == "atheris" else " --random 2000"
        c.run(f"{py} -m fuzz coverage {shlex.quote(str(work / 'corpus'))} fuzz/corpus{extra}")
