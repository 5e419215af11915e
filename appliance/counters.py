"""The engine's counters, and the log line the shell prints of them."""

from dataclasses import dataclass, field

from appliance.frames import Side


@dataclass
class Counters:
    frames_in: dict[Side, int] = field(default_factory=lambda: dict.fromkeys(Side, 0))
    frames_out: dict[Side, int] = field(default_factory=lambda: dict.fromkeys(Side, 0))
    translated: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(("tcp", "udp", "icmp"), 0)
    )
    drops: dict[str, int] = field(default_factory=dict)
    refused: dict[str, int] = field(default_factory=dict)
    icmp_errors_sent: int = 0
    aggregates: int = 0  # TCP aggregates (GRO/TSO) received and translated whole

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
