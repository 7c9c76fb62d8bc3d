"""The NAT vocabulary, one place: RFC 4787 mapping (§4.1) and filtering (§5) behaviours.

``StrEnum`` members are their RFC names as strings, so they compare equal to, print as and
serialise (status JSON, the log, TXT ``nat=``) like the strings they replace.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["Mapping", "Filtering", "HARD_MAPPINGS", "NAT_TXT", "NAT_MAPPING"]


class Mapping(StrEnum):
    """How our NAT maps an internal endpoint (RFC 4787 §4.1). ``DEPENDENT`` is what STUN alone
    can prove (two servers saw different mappings); the RFC 5780 §4.3 test refines it to
    ``ADDRESS`` or ``ADDRESS_AND_PORT``."""

    UNKNOWN = "unknown"
    INDEPENDENT = "endpoint-independent"  # "easy"
    DEPENDENT = "endpoint-dependent"  # "hard": either dependent kind
    ADDRESS = "address-dependent"
    ADDRESS_AND_PORT = "address-and-port-dependent"


class Filtering(StrEnum):
    """Which inbound packets our NAT lets through to a mapping (RFC 4787 §5, RFC 5780 §4.4)."""

    UNKNOWN = "unknown"
    INDEPENDENT = "endpoint-independent"
    ADDRESS = "address-dependent"
    ADDRESS_AND_PORT = "address-and-port-dependent"


HARD_MAPPINGS = frozenset({Mapping.DEPENDENT, Mapping.ADDRESS, Mapping.ADDRESS_AND_PORT})
NAT_TXT = {Mapping.INDEPENDENT: "easy", Mapping.DEPENDENT: "hard"}  # TXT nat= (docs/records.md)
NAT_MAPPING = {v: k for k, v in NAT_TXT.items()}
