"""Command-line tools that run without a daemon (``wgdisco netcheck``)."""
