"""The fleet gate's arithmetic."""
from __future__ import annotations

from vcheck.report.merge import NodeResult, allowed_failures, gate


def test_fleet_gate_arithmetic():
    assert allowed_failures("2%", 100) == 2 and allowed_failures("2%", 49) == 0 and allowed_failures("3", 10) == 3
    nodes = [NodeResult("a", "", {"zone": "1"}), NodeResult("b", "", {"zone": "1"}, failed=["x"]),
             NodeResult("c", "", {"zone": "2"})]
    assert gate(nodes, "1", None).passed
    assert not gate(nodes, "0", None).passed
    g = gate(nodes, "50%", "zone")
    assert g.passed and any("zone=1: 1 of 2" in line for line in g.lines)
