"""wgdisco: WireGuard endpoint discovery and NAT traversal, with a userspace tunnel."""

__version__ = "0.1.0"
