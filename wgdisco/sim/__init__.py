"""An in-memory internet for node cores (issue 26): the unit tests' network and the scale
simulator (``bench/meshsim.py``).

Pure like ``proto/``: no sockets, no clock reads, no threads; the time is the network's fake
clock and randomness is seeded. ``network`` moves datagrams between ``Node`` cores
(proto/node.py, the cores the daemon runs) through simulated NATs and STUN servers;
``rendezvous`` holds the mDNS-like LAN directories and the unicast DNS-SD nameserver that
counts queries and response sizes; ``mesh`` builds a zero-config mesh of N members behind a mix
of NATs and measures it. Only the tests and bench/ import this package, never the daemon.
"""
