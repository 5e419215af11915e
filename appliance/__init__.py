"""natvm's appliance: a NAT that owns its Ethernet frames.

The pure core (checksum, packet, flows, neighbours, fragments, engine, config) never touches a
socket, a clock or a logger; the shell (shell, cli, init) does the I/O around it.
"""
