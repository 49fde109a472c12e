"""The protobuf wire codec against known encodings (the protobuf encoding guide's 150 example,
and runtime.v1 request bytes worked out by hand from the wire format), and round trips. The
live check is the integration test, which talks to a real containerd with it."""
from __future__ import annotations

from vcheck.collectors.containers import protowire as pw


def test_varints_and_negative_int64():
    assert pw.varint(1, 150) == bytes.fromhex("089601")          # the protobuf docs' example
    assert pw.varint(2, -1) == bytes.fromhex("10ffffffffffffffffff01")
    assert pw.parse(bytes.fromhex("089601")) == {1: [150]}


def test_nested_message_and_map_round_trip():
    # ContainerStatusRequest{container_id: "abc", verbose: true}
    assert pw.string(1, "abc") + pw.varint(2, True) == bytes.fromhex("0a036162631001")
    metadata = pw.message(2, [pw.string(1, "web"), pw.string(3, "shop")])
    labels = pw.string_map(5, {"app": "web"})
    pod = pw.parse(pw.string(1, "id1") + metadata + labels)
    assert pw.get_str(pod, 1) == "id1"
    assert pw.get_str(pw.get_msg(pod, 2), 1) == "web" and pw.get_str(pw.get_msg(pod, 2), 3) == "shop"
    assert pw.get_map(pod, 5) == {"app": "web"}
    assert pw.get_int(pod, 9, default=7) == 7


def test_truncated_input_is_an_error():
    import pytest

    with pytest.raises(ValueError):
        pw.parse(bytes.fromhex("0896"))
