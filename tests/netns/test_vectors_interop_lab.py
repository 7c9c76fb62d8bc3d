"""tests/vectors/handshake.json on the wire against a real wireguard-go (tests/vectors/interop_wireguard_go.py).

The stored transcripts come from the code under test (make_handshake_vectors.py); this is where an
independent implementation accepts them: wireguard-go answers the stored initiation byte for byte,
initiates to a Python peer built from wgdisco's Noise and cookie code, and (first vector) hands out
cookie replies under load that wgdisco's CookieGenerator consumes (whitepaper §5.3, §5.4.7).
The offline cross-check with `noiseprotocol` is tests/unit/test_vectors_crosscheck.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.vectors import interop_wireguard_go as interop
from wgdisco.lab import Lab, require_tool

pytestmark = pytest.mark.netns

VECTORS = json.loads((Path(__file__).resolve().parents[1] / "vectors" / "handshake.json").read_text())["vectors"]


@pytest.fixture(autouse=True)
def _tools() -> None:
    for tool in ("wireguard-go", "wg", "ping"):
        require_tool(tool)


@pytest.mark.parametrize("index", range(len(VECTORS)), ids=[v["name"] for v in VECTORS])
def test_wireguard_go_accepts_the_stored_transcript(lab: Lab, index: int) -> None:
    result = interop.one_vector(VECTORS[index], cookie_scenario=index == 0, prefix=lab.prefix)
    shown = json.dumps(result, indent=2)
    assert interop.check(result) == [], shown
    scenarios = ["A", "B", "C"] if index == 0 else ["A", "B"]
    assert [k for k in ("A", "B", "C") if k in result] == scenarios, shown
    assert result["A"]["echo_reply_ok"] and result["A"]["response_mac1_ok"], shown
    assert result["B"]["echo_request_ok"] and result["B"]["ping_ok"], shown
    if index == 0:
        c = result["C"]
        assert c["flood_cookie_replies"] >= 1 and c["b_answered"] and c["c_got_cookie"] and c["c_not_answered"], shown
    # wireguard-go saw a handshake and traffic with every peer a scenario used
    used = [p for p in result["wg_show"].values() if p["endpoint"] != "(none)"]
    assert len(used) == len(scenarios), shown
    assert all(p["latest_handshake"] > 0 and p["rx"] > 0 and p["tx"] > 0 for p in used), shown
