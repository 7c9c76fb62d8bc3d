"""The unit tests' in-memory network: it lives in the package now (wgdisco/sim/network.py,
issue 26) so that bench/meshsim.py runs the same one; this re-exports it for the tests."""

from wgdisco.sim.network import Addr, Nat, Net, Rng, SimNode, StunServer, ipv4_packet  # noqa: F401

__all__ = ["Addr", "Nat", "Net", "Rng", "SimNode", "StunServer", "ipv4_packet"]
