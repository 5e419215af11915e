"""The engine's counters, and the log line the shell prints of them."""

from appliance.frames import Side


class Counters:
    __slots__ = (
        "aggregates",
        "drops",
        "frames_in",
        "frames_out",
        "icmp_errors_sent",
        "refused",
        "translated",
    )

    def __init__(
        self,
        icmp_errors_sent: int = 0,
        aggregates: int = 0,  # TCP aggregates (GRO/TSO) received and translated whole
    ) -> None:
        self.frames_in: dict[Side, int] = dict.fromkeys(Side, 0)
        self.frames_out: dict[Side, int] = dict.fromkeys(Side, 0)
        self.translated: dict[str, int] = dict.fromkeys(("tcp", "udp", "icmp"), 0)
        self.drops: dict[str, int] = {}
        self.refused: dict[str, int] = {}
        self.icmp_errors_sent = icmp_errors_sent
        self.aggregates = aggregates

    def drop(self, reason: str, count: int = 1) -> None:
        self.drops[reason] = self.drops.get(reason, 0) + count

    def refuse(self, reason: str) -> None:
        self.refused[reason] = self.refused.get(reason, 0) + 1

    def line(self, flows: int) -> str:
        """One log line: everything a reader of the console needs to see the NAT working."""
        parts = [
            f"{side}_in={self.frames_in[side]} {side}_out={self.frames_out[side]}" for side in Side
        ]
        parts.append(f"flows={flows}")
        parts += [f"nat_{proto}={count}" for proto, count in self.translated.items()]
        parts.append(f"icmp_errors_sent={self.icmp_errors_sent} aggregates={self.aggregates}")
        parts += [f"refused_{reason}={count}" for reason, count in sorted(self.refused.items())]
        parts.append(f"dropped={sum(self.drops.values())}")
        parts += [f"drop_{reason}={count}" for reason, count in sorted(self.drops.items())]
        return "stats " + " ".join(parts)
