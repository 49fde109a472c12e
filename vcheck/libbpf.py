"""libbpf through ctypes: load a CO-RE object built at set-up, attach its programs, read its
maps and ring buffers, and close it, with no compiler and no bcc in the process.

Only what vcheck's BPF engine needs: open/load/close an object, attach (raw) tracepoints, map
access by fd (batched where the kernel allows), ring buffers with a Python callback. Map keys
and values come back as ctypes objects built from the object's own BTF, the shapes bcc gives,
so collectors read ``key.tgid`` or ``value.value`` on either path.

libbpf's messages (the verifier log among them) are captured per thread, never printed: a
failed load raises LibbpfError with them.
"""
from __future__ import annotations

import ctypes
import errno as errno_mod
import os
import struct
import threading
import time
import traceback
from typing import Any, Callable, Iterator

LIBBPF_SONAME = "libbpf.so.1"

BPF_ANY = 0
MAP_HASH, MAP_ARRAY, MAP_PERCPU_HASH, MAP_PERCPU_ARRAY, MAP_RINGBUF = 1, 2, 5, 6, 27
_PERCPU = (MAP_PERCPU_HASH, MAP_PERCPU_ARRAY, 10)   # 10: LRU_PERCPU_HASH
_LEVEL_WARN = 0


class LibbpfError(Exception):
    """A libbpf call failed: .errno and, for loads, what libbpf said (verifier log included)."""

    def __init__(self, what: str, err: int, log: str = ""):
        self.errno = err
        self.log = log
        super().__init__(f"{what}: {os.strerror(err) if err else 'failed'}" + (f"\n{log}" if log else ""))


class _OpenOpts(ctypes.Structure):
    """struct bpf_object_open_opts of libbpf 1.x (sz first: newer libbpfs accept it)."""

    _fields_ = [("sz", ctypes.c_size_t), ("object_name", ctypes.c_char_p), ("relaxed_maps", ctypes.c_bool),
                ("pin_root_path", ctypes.c_char_p), ("_attach_prog_fd", ctypes.c_uint32),
                ("kconfig", ctypes.c_char_p), ("btf_custom_path", ctypes.c_char_p),
                ("kernel_log_buf", ctypes.c_char_p), ("kernel_log_size", ctypes.c_size_t),
                ("kernel_log_level", ctypes.c_uint32)]


_PRINT_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)
SAMPLE_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)

_lib: ctypes.CDLL | None = None
_lib_lock = threading.Lock()
_messages = threading.local()


def _on_print(level: int, fmt: bytes, args: int) -> int:
    log = getattr(_messages, "lines", None)
    if level != _LEVEL_WARN or log is None or len(log) >= 400:
        return 0
    buf = ctypes.create_string_buffer(1 << 22)   # a verifier log comes as one message
    _libc.vsnprintf(buf, len(buf), fmt, ctypes.c_void_p(args))
    log.append(buf.value.decode("utf-8", "replace").rstrip())
    return 0


_print_cb = _PRINT_FN(_on_print)
_libc = ctypes.CDLL(None, use_errno=True)   # the process's own libc: no ldconfig lookup
_libc.vsnprintf.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_void_p]


def _sig(lib: ctypes.CDLL, name: str, restype: Any, *argtypes: Any) -> None:
    fn = getattr(lib, name)
    fn.restype = restype
    fn.argtypes = list(argtypes)


def lib() -> ctypes.CDLL:
    """libbpf.so.1, with the signatures vcheck uses; OSError when it is not installed."""
    global _lib
    with _lib_lock:
        if _lib is not None:
            return _lib
        l = ctypes.CDLL(LIBBPF_SONAME, use_errno=True)
        P, I, U32, S, VP = ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32, ctypes.c_char_p, ctypes.c_void_p
        _sig(l, "libbpf_set_print", P, _PRINT_FN)
        _sig(l, "bpf_object__open_file", P, S, ctypes.POINTER(_OpenOpts))
        _sig(l, "bpf_object__load", I, P)
        _sig(l, "bpf_object__close", None, P)
        _sig(l, "bpf_object__btf", P, P)
        _sig(l, "bpf_object__find_program_by_name", P, P, S)
        _sig(l, "bpf_object__next_program", P, P, P)
        _sig(l, "bpf_program__name", S, P)
        _sig(l, "bpf_object__find_map_by_name", P, P, S)
        _sig(l, "bpf_program__set_autoload", I, P, ctypes.c_bool)
        _sig(l, "bpf_program__attach_tracepoint", P, P, S, S)
        _sig(l, "bpf_program__attach_raw_tracepoint", P, P, S)
        _sig(l, "bpf_program__attach_trace", P, P)
        _sig(l, "bpf_program__section_name", S, P)
        _sig(l, "bpf_link__destroy", I, P)
        _sig(l, "bpf_program__fd", I, P)
        _sig(l, "bpf_obj_get_info_by_fd", I, I, VP, ctypes.POINTER(U32))
        _sig(l, "bpf_prog_get_fd_by_id", I, U32)
        _sig(l, "bpf_map__fd", I, P)
        _sig(l, "bpf_map__type", I, P)
        _sig(l, "bpf_map__key_size", U32, P)
        _sig(l, "bpf_map__value_size", U32, P)
        _sig(l, "bpf_map__max_entries", U32, P)
        _sig(l, "bpf_map__btf_key_type_id", U32, P)
        _sig(l, "bpf_map__btf_value_type_id", U32, P)
        _sig(l, "bpf_map__initial_value", VP, P, ctypes.POINTER(ctypes.c_size_t))
        _sig(l, "btf__raw_data", VP, P, ctypes.POINTER(U32))
        _sig(l, "libbpf_num_possible_cpus", I)
        _sig(l, "bpf_map_get_next_key", I, I, VP, VP)
        _sig(l, "bpf_map_lookup_elem", I, I, VP, VP)
        _sig(l, "bpf_map_update_elem", I, I, VP, VP, ctypes.c_uint64)
        _sig(l, "bpf_map_delete_elem", I, I, VP)
        _sig(l, "bpf_map_lookup_batch", I, I, VP, VP, VP, VP, ctypes.POINTER(U32), VP)
        _sig(l, "ring_buffer__new", P, I, SAMPLE_FN, VP, VP)
        _sig(l, "ring_buffer__add", I, P, I, SAMPLE_FN, VP)
        _sig(l, "ring_buffer__poll", I, P, I)
        _sig(l, "ring_buffer__consume", I, P)
        _sig(l, "ring_buffer__free", None, P)
        l.libbpf_set_print(_print_cb)
        _lib = l
        return l


def _err(rc: int | None = None) -> int:
    if rc is not None and rc < 0:
        return -rc
    return ctypes.get_errno() or errno_mod.EINVAL


class _Capture:
    """Collect libbpf's warnings on this thread while a call runs."""

    def __enter__(self) -> "_Capture":
        self.prev = getattr(_messages, "lines", None)
        _messages.lines = self.lines = []
        return self

    def __exit__(self, *exc: Any) -> None:
        _messages.lines = self.prev

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


# --- BTF -> ctypes ---------------------------------------------------------------------------
_INT, _PTR, _ARRAY, _STRUCT, _UNION, _ENUM, _FWD, _TYPEDEF, _VOLATILE, _CONST, _RESTRICT = range(1, 12)
_FUNC, _FUNC_PROTO, _VAR, _DATASEC, _FLOAT, _DECL_TAG, _TYPE_TAG, _ENUM64 = range(12, 20)
_EXTRA = {_INT: 4, _ARRAY: 12, _VAR: 4, _DECL_TAG: 4}
_PER_MEMBER = {_STRUCT: 12, _UNION: 12, _ENUM: 8, _FUNC_PROTO: 8, _DATASEC: 12, _ENUM64: 12}


class Btf:
    """The types of one BTF blob (raw bytes), and ctypes types made from them."""

    def __init__(self, raw: bytes):
        magic, _ver, _flags, hdr_len, type_off, type_len, str_off, str_len = struct.unpack_from("<HBBIIIII", raw)
        if magic != 0xEB9F:
            raise ValueError("not BTF (or not this machine's byte order)")
        types = raw[hdr_len + type_off: hdr_len + type_off + type_len]
        self.strings = raw[hdr_len + str_off: hdr_len + str_off + str_len]
        self.types: list[tuple] = [(0, 0, 0, 0, b"")]   # id 0: void
        pos = 0
        while pos < len(types):
            name_off, info, size_or_type = struct.unpack_from("<III", types, pos)
            kind, vlen = (info >> 24) & 0x1F, info & 0xFFFF
            n = 12 + _EXTRA.get(kind, 0) + _PER_MEMBER.get(kind, 0) * vlen
            self.types.append((kind, name_off, info, size_or_type, types[pos + 12: pos + n]))
            pos += n
        self._ctypes: dict[int, Any] = {}

    def name(self, off: int) -> str:
        end = self.strings.index(b"\0", off)
        return self.strings[off:end].decode()

    def find(self, name: str, kind: int) -> int | None:
        for i, t in enumerate(self.types):
            if t[0] == kind and self.name(t[1]) == name:
                return i
        return None

    def datasec_vars(self, name: str) -> dict[str, tuple[int, int]]:
        """Variables of a data section (".rodata") as {name: (offset, size)}."""
        sec = self.find(name, _DATASEC)
        if sec is None:
            return {}
        kind, _, info, _, extra = self.types[sec]
        out = {}
        for i in range(info & 0xFFFF):
            var, off, size = struct.unpack_from("<III", extra, 12 * i)
            out[self.name(self.types[var][1])] = (off, size)
        return out

    def ctype(self, tid: int) -> Any:
        """A ctypes type laid out exactly as BTF type tid (char arrays as c_char * n, so a comm
        reads as bytes, as under bcc)."""
        t = self._ctypes.get(tid)
        if t is None:
            t = self._ctypes[tid] = self._make(tid)
        return t

    def _make(self, tid: int) -> Any:
        kind, name_off, info, st, extra = self.types[tid]
        name = self.name(name_off)
        if kind == _INT:
            enc = struct.unpack_from("<I", extra)[0] >> 24
            if name == "char" or enc & 2:
                return ctypes.c_char
            if enc & 4:
                return ctypes.c_bool
            return {(1, 0): ctypes.c_uint8, (1, 1): ctypes.c_int8, (2, 0): ctypes.c_uint16, (2, 1): ctypes.c_int16,
                    (4, 0): ctypes.c_uint32, (4, 1): ctypes.c_int32, (8, 0): ctypes.c_uint64,
                    (8, 1): ctypes.c_int64}.get((st, enc & 1), ctypes.c_uint8 * st)
        if kind in (_ENUM, _ENUM64):
            return {1: ctypes.c_uint8, 2: ctypes.c_uint16, 4: ctypes.c_uint32, 8: ctypes.c_uint64}[st]
        if kind == _FLOAT:
            return ctypes.c_float if st == 4 else ctypes.c_double
        if kind == _PTR:
            return ctypes.c_uint64
        if kind == _ARRAY:
            elem, _, n = struct.unpack_from("<III", extra)
            return self.ctype(elem) * n
        if kind in (_TYPEDEF, _VOLATILE, _CONST, _RESTRICT, _TYPE_TAG):
            return self.ctype(st)
        if kind in (_STRUCT, _UNION):
            return self._record(tid, name, kind, info, st, extra)
        raise ValueError(f"BTF type {tid} (kind {kind}) cannot be a map key or value")

    def _record(self, tid: int, name: str, kind: int, info: int, size: int, extra: bytes) -> Any:
        bitfields = bool(info >> 31)
        fields: list[tuple] = []
        at = 0
        for i in range(info & 0xFFFF):
            m_name_off, m_type, m_off = struct.unpack_from("<III", extra, 12 * i)
            bits = m_off >> 24 if bitfields else 0
            bit_off = m_off & 0xFFFFFF if bitfields else m_off
            if bits or bit_off % 8:
                raise ValueError(f"bitfield in BTF {name or tid}: not supported")
            off = bit_off // 8
            mname = self.name(m_name_off) or f"_anon{i}"
            mtype = self.ctype(m_type)
            if kind == _STRUCT and off > at:
                fields.append((f"_pad{i}", ctypes.c_uint8 * (off - at)))
            fields.append((mname, mtype))
            at = max(at, off + ctypes.sizeof(mtype)) if kind == _STRUCT else max(at, ctypes.sizeof(mtype))
        if at < size:
            fields.append(("_pad_end", ctypes.c_uint8 * (size - at)))
        base = ctypes.Structure if kind == _STRUCT else ctypes.Union
        cls = type(name or f"anon{tid}", (base,), {"_pack_": 1, "_fields_": fields})
        if ctypes.sizeof(cls) != size:
            raise ValueError(f"BTF {name or tid}: laid out as {ctypes.sizeof(cls)} bytes, BTF says {size}")
        return cls


# --- maps -----------------------------------------------------------------------------------
class Map:
    """One map of a loaded object, read and written like a bcc table."""

    BATCH = 4096

    def __init__(self, name: str, fd: int, mtype: int, key_type: Any, value_type: Any, max_entries: int):
        self.name, self.fd, self.type = name, fd, mtype
        self.Key, self.Leaf = key_type, value_type
        self.max_entries = max_entries
        self.rings: RingBuffers | None = None   # the object's, for open_ring_buffer
        self._ncpu = lib().libbpf_num_possible_cpus() if mtype in _PERCPU else 0
        if self._ncpu:   # per-CPU values are 8-byte aligned, one per possible CPU
            self._stride = (ctypes.sizeof(value_type) + 7) // 8 * 8
            self._vsize = self._stride * self._ncpu
        else:
            self._vsize = ctypes.sizeof(value_type)
        self._batch_ok = mtype in (MAP_HASH, MAP_PERCPU_HASH)

    @property
    def is_array(self) -> bool:
        return self.type in (MAP_ARRAY, MAP_PERCPU_ARRAY)

    def _key(self, key: Any) -> Any:
        if isinstance(key, self.Key):
            return key
        if isinstance(key, int):
            return self.Key(key)
        k = self.Key()
        ctypes.memmove(ctypes.byref(k), ctypes.byref(key), min(ctypes.sizeof(k), ctypes.sizeof(key)))
        return k

    def _value(self, raw: Any, offset: int = 0) -> Any:
        if not self._ncpu:
            return self.Leaf.from_buffer_copy(raw, offset)
        return [self.Leaf.from_buffer_copy(raw, offset + i * self._stride) for i in range(self._ncpu)]

    def __getitem__(self, key: Any) -> Any:
        k = self._key(key)
        buf = ctypes.create_string_buffer(self._vsize)
        if lib().bpf_map_lookup_elem(self.fd, ctypes.byref(k), buf) < 0:
            raise KeyError(key)
        return self._value(buf)

    def __setitem__(self, key: Any, value: Any) -> None:
        k = self._key(key)
        v = value if isinstance(value, self.Leaf) else self.Leaf(value) if isinstance(value, int) else value
        buf = ctypes.create_string_buffer(self._vsize)
        ctypes.memmove(buf, ctypes.byref(v), min(self._vsize, ctypes.sizeof(v)))
        rc = lib().bpf_map_update_elem(self.fd, ctypes.byref(k), buf, BPF_ANY)
        if rc < 0:
            raise LibbpfError(f"update of map {self.name}", _err(rc))

    def __delitem__(self, key: Any) -> None:
        k = self._key(key)
        if self.is_array:
            self[k] = self.Leaf()
            return
        if lib().bpf_map_delete_elem(self.fd, ctypes.byref(k)) < 0:
            raise KeyError(key)

    def keys(self) -> list[Any]:
        if self.is_array:
            return [self.Key(i) for i in range(self.max_entries)]
        out = []
        key, prev = self.Key(), None
        # a key deleted meanwhile restarts the walk: never more than the map can hold
        while len(out) <= self.max_entries and lib().bpf_map_get_next_key(self.fd, prev, ctypes.byref(key)) == 0:
            out.append(key)
            prev = ctypes.byref(key)
            key = self.Key()
        return out

    def items(self) -> list[tuple[Any, Any]]:
        if self._batch_ok:
            try:
                return list(self._items_batch())
            except LibbpfError as exc:
                if exc.errno not in (errno_mod.EINVAL, errno_mod.ENOTSUP, errno_mod.EOPNOTSUPP, 524):
                    raise
                self._batch_ok = False   # an older kernel: one lookup per key
        out = []
        for k in self.keys():
            try:
                out.append((k, self[k]))
            except KeyError:   # deleted meanwhile by the program
                continue
        return out

    def _items_batch(self) -> Iterator[tuple[Any, Any]]:
        ks, vs = ctypes.sizeof(self.Key), self._vsize
        n = min(self.BATCH, max(self.max_entries, 1))
        keys = ctypes.create_string_buffer(ks * n)
        vals = ctypes.create_string_buffer(vs * n)
        token = ctypes.create_string_buffer(max(ks, 8))
        first = True
        while True:
            count = ctypes.c_uint32(n)
            rc = lib().bpf_map_lookup_batch(self.fd, None if first else token, token, keys, vals,
                                            ctypes.byref(count), None)
            err = _err(rc) if rc < 0 else 0
            if rc < 0 and err == errno_mod.ENOSPC:   # one hash bucket holds more than n: grow
                n *= 2
                keys = ctypes.create_string_buffer(ks * n)
                vals = ctypes.create_string_buffer(vs * n)
                continue
            if rc < 0 and err != errno_mod.ENOENT:
                raise LibbpfError(f"batch lookup of map {self.name}", err)
            kraw, vraw = keys.raw, vals.raw
            for i in range(count.value):
                yield self.Key.from_buffer_copy(kraw, i * ks), self._value(vraw, i * vs)
            if rc < 0:   # ENOENT: that was the last batch
                return
            first = False

    def values(self) -> list[Any]:
        return [v for _, v in self.items()]

    def __iter__(self) -> Iterator[Any]:
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self.keys())

    def open_ring_buffer(self, callback: Callable[[Any, int, int], None]) -> None:
        """callback(ctx, data, size) for each record of this ring buffer map (bcc's call)."""
        if self.type != MAP_RINGBUF or self.rings is None:
            raise LibbpfError(f"map {self.name} is not a ring buffer", errno_mod.EINVAL)
        self.rings.add(self.fd, callback)

    def clear(self) -> None:
        """Delete every entry (arrays: zero every value), as bcc's clear()."""
        if self.is_array:
            zero = ctypes.create_string_buffer(self._vsize)
            for i in range(self.max_entries):
                k = self.Key(i)
                lib().bpf_map_update_elem(self.fd, ctypes.byref(k), zero, BPF_ANY)
            return
        for k in self.keys():
            lib().bpf_map_delete_elem(self.fd, ctypes.byref(k))


class RingBuffers:
    """libbpf's ring buffer manager over any number of ring buffer maps."""

    def __init__(self) -> None:
        self._rb: int | None = None
        self._callbacks: list[Any] = []   # kept alive as long as libbpf may call them

    def add(self, fd: int, callback: Callable[[Any, int, int], None]) -> None:
        def sample(ctx: int, data: int, size: int) -> int:
            try:
                callback(ctx, data, size)
            except Exception:   # as a ctypes callback under bcc: said, and the stream goes on
                traceback.print_exc()
            return 0

        cb = SAMPLE_FN(sample)
        self._callbacks.append(cb)
        if self._rb is None:
            rb = lib().ring_buffer__new(fd, cb, None, None)
            if not rb:
                raise LibbpfError("ring_buffer__new", _err())
            self._rb = rb
        else:
            rc = lib().ring_buffer__add(self._rb, fd, cb, None)
            if rc < 0:
                raise LibbpfError("ring_buffer__add", _err(rc))

    def _check(self, rc: int, what: str) -> None:
        if rc < 0 and -rc != errno_mod.EINTR:
            raise LibbpfError(what, -rc)

    def poll(self, timeout_ms: int) -> None:
        if self._rb is not None:
            self._check(lib().ring_buffer__poll(self._rb, timeout_ms), "ring_buffer__poll")

    def consume(self) -> None:
        if self._rb is not None:
            self._check(lib().ring_buffer__consume(self._rb), "ring_buffer__consume")

    def free(self) -> None:
        rb, self._rb = self._rb, None
        if rb is not None:
            lib().ring_buffer__free(rb)


# --- objects --------------------------------------------------------------------------------
class BpfObject:
    """One CO-RE object: open, set read-only globals, choose programs, load, attach, close."""

    def __init__(self, path: str, btf_custom_path: str | None = None):
        l = lib()
        opts = _OpenOpts(sz=ctypes.sizeof(_OpenOpts))
        if btf_custom_path:
            opts.btf_custom_path = btf_custom_path.encode()
        with _Capture() as log:
            obj = l.bpf_object__open_file(path.encode(), ctypes.byref(opts))
        if not obj:
            raise LibbpfError(f"opening {path}", _err(), log.text)
        self._obj: int | None = obj
        self._links: list[int] = []
        self._prog_ids: list[int] = []   # the kernel's ids of the loaded programs: close waits for them
        self._maps: dict[str, Map] = {}
        self.rings = RingBuffers()
        raw_size = ctypes.c_uint32()
        raw = l.btf__raw_data(l.bpf_object__btf(obj), ctypes.byref(raw_size))
        self.btf = Btf(ctypes.string_at(raw, raw_size.value))

    def _need(self) -> int:
        if self._obj is None:
            raise LibbpfError("object is closed", errno_mod.EBADF)
        return self._obj

    def set_rodata(self, values: dict[str, int]) -> list[str]:
        """Set read-only globals (before load); returns the names the object has no variable for."""
        obj = self._need()
        m = lib().bpf_object__find_map_by_name(obj, b".rodata")
        layout = self.btf.datasec_vars(".rodata")
        missing = [n for n in values if n not in layout]
        if not m or not layout:
            return list(values)
        size = ctypes.c_size_t()
        base = lib().bpf_map__initial_value(m, ctypes.byref(size))
        for name, value in values.items():
            if name in layout:
                off, width = layout[name]
                ctypes.memmove(base + off, value.to_bytes(width, "little", signed=value < 0), width)
        return missing

    def _programs(self) -> Iterator[int]:
        p = None
        while True:
            p = lib().bpf_object__next_program(self._need(), p)
            if not p:
                return
            yield p

    def program_names(self) -> list[str]:
        return [lib().bpf_program__name(p).decode() for p in self._programs()]

    def program(self, name: str) -> int:
        p = lib().bpf_object__find_program_by_name(self._need(), name.encode())
        if not p:
            raise LibbpfError(f"no program {name} in the object", errno_mod.ENOENT)
        return p

    def set_autoload(self, name: str, on: bool) -> None:
        lib().bpf_program__set_autoload(self.program(name), on)

    def load(self) -> None:
        with _Capture() as log:
            rc = lib().bpf_object__load(self._need())
        if rc < 0:
            raise LibbpfError("loading the object", _err(rc), log.text)
        # programs left out of the load (set_autoload off) have no fd and no id
        self._prog_ids = [i for p in self._programs() if lib().bpf_program__fd(p) >= 0 and (i := _prog_id(p))]

    def attach_tracepoint(self, fn_name: str, category: str, event: str) -> None:
        self._attach(fn_name, lambda p: lib().bpf_program__attach_tracepoint(p, category.encode(), event.encode()),
                     f"{category}:{event}")

    def attach_raw_tracepoint(self, fn_name: str, event: str) -> None:
        """A raw tracepoint; a typed one (section tp_btf/EVENT) names its event itself."""
        section = (lib().bpf_program__section_name(self.program(fn_name)) or b"").decode()
        if section.startswith("tp_btf/"):
            if section != f"tp_btf/{event}":
                raise LibbpfError(f"{fn_name} is built for {section}, not {event}", errno_mod.EINVAL)
            self._attach(fn_name, lambda p: lib().bpf_program__attach_trace(p), f"typed raw tracepoint {event}")
            return
        self._attach(fn_name, lambda p: lib().bpf_program__attach_raw_tracepoint(p, event.encode()),
                     f"raw tracepoint {event}")

    def _attach(self, fn_name: str, call: Callable[[int], int], what: str) -> None:
        prog = self.program(fn_name)
        with _Capture() as log:
            link = call(prog)
        if not link:
            raise LibbpfError(f"attaching {fn_name} to {what}", _err(), log.text)
        self._links.append(link)

    def map(self, name: str) -> Map:
        m = self._maps.get(name)
        if m is not None:
            return m
        l = lib()
        ptr = l.bpf_object__find_map_by_name(self._need(), f"{name}__map".encode()) or \
            l.bpf_object__find_map_by_name(self._need(), name.encode())
        if not ptr:
            raise KeyError(name)
        mtype = l.bpf_map__type(ptr)
        if mtype == MAP_RINGBUF:
            key_t: Any = ctypes.c_uint32
            val_t: Any = ctypes.c_uint8
        else:
            kid, vid = l.bpf_map__btf_key_type_id(ptr), l.bpf_map__btf_value_type_id(ptr)
            key_t = self.btf.ctype(kid) if kid else ctypes.c_uint8 * l.bpf_map__key_size(ptr)
            val_t = self.btf.ctype(vid) if vid else ctypes.c_uint8 * l.bpf_map__value_size(ptr)
        m = self._maps[name] = Map(name, l.bpf_map__fd(ptr), mtype, key_t, val_t, l.bpf_map__max_entries(ptr))
        m.rings = self.rings
        return m

    # bcc's BPF object interface, so the engine drives either path alike
    def __getitem__(self, name: bytes | str) -> Map:
        return self.map(name.decode() if isinstance(name, bytes) else name)

    def ring_buffer_poll(self, timeout_ms: int = -1) -> None:
        self.rings.poll(timeout_ms)

    def ring_buffer_consume(self) -> None:
        self.rings.consume()

    def cleanup(self) -> None:
        self.close()

    def close(self) -> None:
        """Detach every program and free the object; idempotent."""
        self.rings.free()
        links, self._links = self._links, []
        for link in reversed(links):
            lib().bpf_link__destroy(link)
        obj, self._obj = self._obj, None
        if obj is not None:
            lib().bpf_object__close(obj)
        ids, self._prog_ids = self._prog_ids, []
        _wait_gone(ids)


PROG_GONE_WAIT = 1.0   # seconds: a grace period or two, even on a loaded machine


def _prog_id(prog: int) -> int:
    """The kernel's id of a loaded program (struct bpf_prog_info: type, then id)."""
    info = (ctypes.c_uint32 * 64)()
    size = ctypes.c_uint32(ctypes.sizeof(info))
    if lib().bpf_obj_get_info_by_fd(lib().bpf_program__fd(prog), info, ctypes.byref(size)) < 0:
        return 0
    return info[1]


def _wait_gone(ids: list[int]) -> None:
    """Until the programs are freed. A raw tracepoint's link frees its program only after an RCU
    grace period: without the wait, "closed" would not yet mean "no vcheck program loaded"."""
    deadline = time.monotonic() + PROG_GONE_WAIT
    pending = list(ids)
    while pending and time.monotonic() < deadline:
        still = []
        for i in pending:
            fd = lib().bpf_prog_get_fd_by_id(i)
            if fd >= 0:
                os.close(fd)
                still.append(i)
        pending = still
        if pending:
            time.sleep(0.002)
