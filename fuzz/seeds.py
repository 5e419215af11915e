"""The seed corpus: inputs chosen, from many drawn with a fixed seed, for reaching behaviour the
others do not (a drop reason, a refusal, a protocol translated, an ICMP error sent, an aggregate,
a TCP state), so that every campaign starts from inputs that reach each part of the engine.
Regenerated with `python -m fuzz seeds`; inputs that found bugs (`crash-*`) stay beside them."""

import random
from pathlib import Path

from fuzz.program import Program

CANDIDATES = 6000


def features(program: Program) -> set[str]:
    """What a run of an input reached, as names."""
    counters, table = program.nat.counters, program.nat.table
    reached = {f"drop:{reason}" for reason in counters.drops}
    reached |= {f"refused:{reason}" for reason in counters.refused}
    reached |= {f"nat:{proto}" for proto, count in counters.translated.items() if count}
    reached |= {f"tcp:{s.state.name}" for m in table.by_internal.values() for s in m.sessions()}
    if counters.icmp_errors_sent:
        reached.add("icmp-errors-sent")
    if counters.aggregates:
        reached.add("aggregates")
    variant = program.reader.data[:1] or b"\x00"
    return reached | {f"variant{variant[0] % 6}:{name}" for name in reached if name[:4] == "nat:"}


def choose(seed: int = 1, candidates: int = CANDIDATES) -> list[bytes]:
    rng = random.Random(seed)
    chosen: list[bytes] = []
    seen: set[str] = set()
    for _ in range(candidates):
        data = rng.randbytes(rng.randrange(16, 768))
        program = Program(data)
        program.run()
        new = features(program) - seen
        if new:
            seen |= new
            chosen.append(data)
    return chosen


def write(directory: Path) -> list[Path]:
    for old in directory.glob("seed-*"):
        old.unlink()
    paths = []
    for number, data in enumerate(choose()):
        path = directory / f"seed-{number:03d}"
        path.write_bytes(data)
        paths.append(path)
    return paths
