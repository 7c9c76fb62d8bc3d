"""Thin shells, one per real thing. A shell never imports another shell or the daemon."""
