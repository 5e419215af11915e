"""Running many programs: a seeded random campaign, atheris's coverage-guided one, the replay of
saved inputs, and the coverage a set of inputs reaches.

The random campaign (stdlib only, what CI runs for a fixed number of frames) draws each input
from a `random.Random(seed)`: mostly a saved input mutated (bytes flipped, inserted, deleted,
repeated, spliced with another saved input, steps appended), sometimes fresh random bytes. The
atheris campaign lets libFuzzer do the same guided by the appliance's branch coverage, and keeps
the inputs that reach new code in its working corpus. Either stops after a number of frames.
"""

import hashlib
import json
import random
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "fuzz" / "corpus"
MAX_INPUT = 4096
# The engine's pure modules, what the fuzzer drives; the rest of appliance/ is I/O and config.
NOT_DRIVEN = (
    "shell.py",
    "netvmshell.py",
    "init.py",
    "cli.py",
    "linux.py",
    "__main__.py",
    "config.py",
)


class Finding(Exception):
    """An input that made the engine raise or an oracle fail."""

    def __init__(self, data: bytes, error: BaseException) -> None:
        super().__init__(f"{type(error).__name__}: {error}")
        self.data, self.error = data, error


@dataclass
class Report:
    frames: int
    emitted: int
    inputs: int
    seconds: float

    def line(self) -> str:
        rate = self.frames / self.seconds if self.seconds else 0.0
        return (
            f"fuzz: {self.frames} frames ({self.emitted} emitted) from {self.inputs} inputs in "
            f"{self.seconds:.1f} s: {rate:.0f} frames/s"
        )


def load_corpus(*directories: Path) -> list[bytes]:
    files = sorted(
        path for directory in directories for path in directory.glob("*") if path.is_file()
    )
    return [path.read_bytes() for path in files]


def save_finding(finding: Finding, directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"crash-{hashlib.sha1(finding.data).hexdigest()}"
    path.write_bytes(finding.data)
    return path


def mutated(rng: random.Random, data: bytes, corpus: list[bytes]) -> bytes:
    out = bytearray(data)
    for _ in range(1 + rng.randrange(4)):
        kind = rng.randrange(7)
        at = rng.randrange(len(out) + 1)
        if kind == 0 and out:
            out[min(at, len(out) - 1)] ^= 1 << rng.randrange(8)
        elif kind == 1 and out:
            out[min(at, len(out) - 1)] = rng.randrange(256)
        elif kind == 2:
            out[at:at] = rng.randbytes(rng.randrange(1, 16))
        elif kind == 3:
            del out[at : at + rng.randrange(1, 16)]
        elif kind == 4 and out:
            start = rng.randrange(len(out))
            out[at:at] = out[start : start + rng.randrange(1, 32)]
        elif kind == 5 and corpus:
            other = rng.choice(corpus)
            out[at:] = other[rng.randrange(len(other) + 1) :]
        else:
            out += rng.randbytes(rng.randrange(1, 64))
    return bytes(out[:MAX_INPUT])


def inputs(rng: random.Random, corpus: list[bytes]) -> Iterator[bytes]:
    """The saved inputs once as they are, then endless random and mutated ones."""
    yield from corpus
    while True:
        if not corpus or rng.random() < 0.1:
            yield rng.randbytes(rng.randrange(1, 512))
        else:
            yield mutated(rng, rng.choice(corpus), corpus)


def random_campaign(frames: int, seed: int, corpus: list[bytes], progress: bool = False) -> Report:
    """Run inputs until `frames` frames went through the engine; raises Finding."""
    from fuzz.program import Result, run_input

    result, count, started, shown = Result(), 0, time.monotonic(), time.monotonic()
    for data in inputs(random.Random(seed), corpus):
        if result.frames >= frames:
            break
        count += 1
        try:
            run_input(data, result)
        except Exception as error:
            raise Finding(data, error) from error
        if progress and time.monotonic() - shown >= 30:
            shown = time.monotonic()
            print(Report(result.frames, result.emitted, count, shown - started).line(), flush=True)
    return Report(result.frames, result.emitted, count, time.monotonic() - started)


def atheris_campaign(frames: int, seed: int, work: Path) -> None:
    """libFuzzer, guided by the coverage of appliance/ (instrumented as it is imported), over a
    working corpus in `work` seeded from the saved one; exits the process when done."""
    import os

    import atheris

    with atheris.instrument_imports(include=["appliance"]):
        import appliance.engine  # noqa: F401
    from fuzz.program import Result, run_input

    corpus = work / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    result, count, started = Result(), 0, time.monotonic()
    shown = [started]

    def one_input(data: bytes) -> None:
        nonlocal count
        count += 1
        run_input(data, result)
        now = time.monotonic()
        if now - shown[0] >= 30 or result.frames >= frames:
            shown[0] = now
            report = Report(result.frames, result.emitted, count, now - started)
            print(report.line() + f", corpus {sum(1 for _ in corpus.iterdir())} inputs", flush=True)
            if result.frames >= frames:
                (work / "report.json").write_text(json.dumps(report.__dict__) + "\n")
                sys.stdout.flush()
                os._exit(0)

    arguments = [sys.argv[0], f"-seed={seed}", f"-max_len={MAX_INPUT}", "-timeout=60"]
    arguments += [f"-artifact_prefix={work}/", "-print_final_stats=1", str(corpus), str(CORPUS)]
    atheris.Setup(arguments, one_input)
    atheris.Fuzz()


def replay(paths: list[Path]) -> int:
    """Run saved inputs; the number that failed (each reported with its error)."""
    from fuzz.program import run_input

    failed = 0
    for path in paths:
        try:
            result = run_input(path.read_bytes())
        except Exception as error:
            failed += 1
            print(f"{path}: {type(error).__name__}: {error}")
            import traceback

            traceback.print_exc()
        else:
            print(f"{path}: ok, {result.frames} frames, {result.emitted} emitted")
    return failed


def coverage(directories: list[Path], extra: int, seed: int, out: Path) -> dict[str, float]:
    """Lines and branches of appliance/ that `directories`' inputs (and `extra` inputs of the
    random campaign with `seed`) reach, measured with coverage.py; the JSON report in `out`."""
    import coverage as coverage_py

    measure = coverage_py.Coverage(branch=True, source=[str(ROOT / "appliance")], data_file=None)
    measure.start()
    from fuzz.program import run_input

    corpus = load_corpus(*directories)
    generated = inputs(random.Random(seed), corpus)
    for data in corpus + [next(generated) for _ in range(extra)]:
        try:
            run_input(data)
        except Exception as error:  # a finding: reported by the campaign, not here
            print(f"(an input failed during coverage: {type(error).__name__}: {error})")
    measure.stop()
    out.parent.mkdir(parents=True, exist_ok=True)
    measure.json_report(outfile=str(out))
    files = json.loads(out.read_text())["files"]
    totals = {}
    for name, chosen in (
        ("engine", {k: v for k, v in files.items() if Path(k).name not in NOT_DRIVEN}),
        ("appliance", files),
    ):
        summary = [entry["summary"] for entry in chosen.values()]
        lines = sum(s["covered_lines"] for s in summary), sum(s["num_statements"] for s in summary)
        branches = (
            sum(s["covered_branches"] for s in summary),
            sum(s["num_branches"] for s in summary),
        )
        totals[f"{name}_lines"] = 100 * lines[0] / lines[1]
        totals[f"{name}_branches"] = 100 * branches[0] / branches[1]
        print(
            f"coverage of {name} ({len(chosen)} files): lines {lines[0]}/{lines[1]} "
            f"({totals[f'{name}_lines']:.1f} %), branches {branches[0]}/{branches[1]} "
            f"({totals[f'{name}_branches']:.1f} %)"
        )
    return totals


def signature(error: BaseException) -> str:
    """What identifies a finding across inputs: the error's type and its message up to the
    first colon (the oracle's messages put the frame after it)."""
    return f"{type(error).__name__}: {str(error).split(':')[0]}"


def failure(data: bytes) -> str | None:
    from fuzz.program import run_input

    try:
        run_input(data)
    except Exception as error:
        return signature(error)
    return None


def minimize(data: bytes) -> bytes:
    """The shortest input found that fails the same way, by deleting ever smaller chunks and
    lowering bytes (a delta debugging pass, repeated until nothing changes)."""
    wanted = failure(data)
    assert wanted is not None, "the input does not fail"
    best, changed = bytearray(data), True
    while changed:
        changed = False
        size = max(1, len(best) // 2)
        while size >= 1:
            start = 0
            while start < len(best):
                candidate = best[:start] + best[start + size :]
                if failure(bytes(candidate)) == wanted:
                    best, changed = candidate, True
                else:
                    start += size
            size //= 2
        for at in range(len(best)):
            for value in (0, best[at] // 2, best[at] - 1):
                if 0 <= value < best[at]:
                    candidate = best[:at] + bytes([value]) + best[at + 1 :]
                    if failure(bytes(candidate)) == wanted:
                        best, changed = candidate, True
                        break
    return bytes(best)
