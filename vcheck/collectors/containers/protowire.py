"""Just enough of the protobuf wire format for the CRI messages vcheck sends and reads.

vcheck speaks CRI without generated code or the protobuf runtime: a message is built from
(field number, value) pairs, and a reply is parsed into field number -> list of raw values,
which the CRI module interprets with the field numbers of the published runtime.v1 API.
"""
from __future__ import annotations

from typing import Iterable, Mapping

VARINT, I64, LEN, I32 = 0, 1, 2, 5


def _varint(v: int) -> bytes:
    if v < 0:
        v += 1 << 64          # int64 negatives are ten-byte varints
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def varint(field: int, v: int | bool) -> bytes:
    return _varint(field << 3 | VARINT) + _varint(int(v))


def length_delimited(field: int, data: bytes) -> bytes:
    return _varint(field << 3 | LEN) + _varint(len(data)) + data


def string(field: int, s: str) -> bytes:
    return length_delimited(field, s.encode())


def message(field: int, parts: Iterable[bytes]) -> bytes:
    return length_delimited(field, b"".join(parts))


def string_map(field: int, m: Mapping[str, str]) -> bytes:
    """map<string,string>: a repeated entry message {key = 1; value = 2}."""
    return b"".join(message(field, [string(1, k), string(2, v)]) for k, v in m.items())


def _read_varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        if i >= len(buf):
            raise ValueError("truncated varint")
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, i
        shift += 7


def parse(buf: bytes) -> dict[int, list[int | bytes]]:
    """field number -> values in order (ints for varints and fixed, bytes for the rest)."""
    out: dict[int, list[int | bytes]] = {}
    i = 0
    while i < len(buf):
        key, i = _read_varint(buf, i)
        field, wire = key >> 3, key & 7
        if wire == VARINT:
            v, i = _read_varint(buf, i)
        elif wire == LEN:
            n, i = _read_varint(buf, i)
            v, i = buf[i:i + n], i + n
        elif wire == I64:
            v, i = int.from_bytes(buf[i:i + 8], "little"), i + 8
        elif wire == I32:
            v, i = int.from_bytes(buf[i:i + 4], "little"), i + 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
        out.setdefault(field, []).append(v)
    return out


def get_str(msg: Mapping[int, list], field: int, default: str = "") -> str:
    v = msg.get(field)
    return v[-1].decode("utf-8", "replace") if v else default


def get_int(msg: Mapping[int, list], field: int, default: int = 0) -> int:
    v = msg.get(field)
    return int(v[-1]) if v else default


def get_msg(msg: Mapping[int, list], field: int) -> dict[int, list]:
    v = msg.get(field)
    return parse(v[-1]) if v else {}


def get_map(msg: Mapping[int, list], field: int) -> dict[str, str]:
    out = {}
    for entry in msg.get(field, []):
        e = parse(entry)
        out[get_str(e, 1)] = get_str(e, 2)
    return out
