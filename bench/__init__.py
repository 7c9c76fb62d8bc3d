"""wgdisco benchmarks (run as scripts; see bench/README.md)."""
