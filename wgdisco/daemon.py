"""The daemon: wires the pure cores (wgdisco.proto) to the shells (wgdisco.io).

Filled in by the tunnel issue; `wgdisco up` reports "not implemented yet" until then.
"""
