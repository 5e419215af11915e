"""natvm's appliance: a NAT that owns its Ethernet frames.

The pure core (checksum, rewrite, packet, segments, flows, neighbours, fragments, engine,
fastpath, frames, counters, addresses, config) never touches a socket, a clock or a logger; the
shell (shell, cli, init) does the I/O around it.
"""
