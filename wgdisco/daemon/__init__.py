"""The daemon package (being split into small modules; see tunnel.py for now)."""

from wgdisco.daemon.tunnel import Tunnel, run_config

__all__ = ["Tunnel", "run_config"]
