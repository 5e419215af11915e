"""A fuzzer for the pure engine: millions of generated and mutated frames, both sides, every
protocol, fragments, ICMP errors quoting what the engine sent, ARP, VLAN tags and offload
metadata, with the oracle's checks after every frame (program.py, oracle.py, campaign.py).

    python -m fuzz run [--engine atheris|random] [--frames N] [--seed N]
    python -m fuzz replay FILE...        python -m fuzz minimize FILE OUT
    python -m fuzz coverage [DIR...]     python -m fuzz seeds   (rewrites fuzz/corpus/seed-*)

Nothing here is imported by the appliance; `invoke fuzz` runs it.
"""
