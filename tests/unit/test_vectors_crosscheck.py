"""tests/vectors/handshake.json against an implementation that is not wgdisco's.

The stored transcripts are written by make_handshake_vectors.py, i.e. by the code under test, so
test_noise.py's byte-exact comparison alone would only prove that wgdisco agrees with itself.
Here `noiseprotocol` (Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s, whitepaper §5.4) recomputes every
message, transcript hash, chaining key and session key from the vector's inputs
(tests/vectors/crosscheck_noiseprotocol.py, which imports nothing of wgdisco). The wire check
against a real wireguard-go is tests/netns/test_vectors_interop_lab.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.vectors import crosscheck_noiseprotocol as crosscheck

VECTORS = json.loads((Path(__file__).resolve().parents[1] / "vectors" / "handshake.json").read_text())["vectors"]
# noiseprotocol warns when a test sets the ephemeral keys, which is what reproducing a transcript means
pytestmark = pytest.mark.filterwarnings("ignore:One of ephemeral keypairs is already set")


def test_the_vectors_are_there() -> None:
    assert [v["name"] for v in VECTORS] == ["no-psk", "psk"]
    assert len(CHECKED) == 19 and all(set(v) == set(VECTORS[0]) for v in VECTORS)


@pytest.mark.parametrize("vector", VECTORS, ids=lambda v: v["name"])
def test_noiseprotocol_recomputes_the_stored_transcript(vector: dict) -> None:
    assert crosscheck.check(vector) == []


def corrupt(vector: dict, field: str) -> dict:
    """``vector`` with the last byte of ``field`` flipped (a number: one more)."""
    bad = dict(vector)
    if isinstance(vector[field], (int, float)):
        bad[field] = vector[field] + 1
    else:
        raw = bytearray.fromhex(vector[field])
        raw[-1] ^= 0x01
        bad[field] = raw.hex()
    return bad


# every field: an output the cross-check compares, or an input that changes what it computes
CHECKED = sorted(set(VECTORS[0]) - {"name"})


@pytest.mark.parametrize("field", CHECKED)
def test_a_corrupted_vector_is_caught(field: str) -> None:
    problems = crosscheck.check(corrupt(VECTORS[1], field))
    assert problems, f"a corrupted {field} went unnoticed"
    assert all(p.startswith("psk: ") for p in problems), problems
