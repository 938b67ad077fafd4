"""The one canonical byte encoding of ledger objects, used for hashing, signing and storage.

A ledger object is a frozen dataclass with a unique ``TAG: ClassVar[int]`` (0..255). Its
encoding is the u8 tag followed by its fields in declaration order, all integers little-endian:

==========================  ===========================================================
field type                  encoding
==========================  ===========================================================
``int``                     i64 (-2**63 .. 2**63-1; ``bool`` is refused where ``int`` is due)
``bool``                    u8 0 or 1
``bytes``                   u32 length, then the bytes
``str``                     its UTF-8 bytes, encoded as ``bytes``
``tuple[X, ...]``           u32 item count, then the items
``tuple[A, B]``             u32 item count (must equal the arity), then the items
ledger dataclass            its own encoding (its tag first)
``A | B`` (ledger classes)  the member's own encoding; its tag tells the decoder which
``X | None``                u8 0, or u8 1 then X
==========================  ===========================================================

Decoding is driven by the dataclass type hints and is strict: every byte string decodes to at
most one object and re-encodes to itself. Trailing bytes, truncation, unknown tags, a count that
does not match, a bool byte other than 0/1 and invalid UTF-8 raise :class:`DecodeError`.
Encoding an object whose field has the wrong type or an out-of-range integer raises
:class:`LedgerError`: such an object has no canonical form.

Speed: each class's field plan (one encoder and one decoder per field) is compiled once, on
first use, and cached.
"""

from __future__ import annotations

import dataclasses
import hashlib
import operator
import struct
import types
import typing
from collections.abc import Callable
from typing import Any, TypeVar, overload

from fedchain.errors import DecodeError, LedgerError

__all__ = [
    "MAX_INT",
    "MIN_INT",
    "compute_hash",
    "decode",
    "encode",
    "encode_with_empty",
]

MIN_INT = -(2**63)
MAX_INT = 2**63 - 1

T = TypeVar("T")

Encoder = Callable[[Any, bytearray], None]
Decoder = Callable[[bytes, int], tuple[Any, int]]

_I64 = struct.Struct("<q")
_U32 = struct.Struct("<I")
_EMPTY_BYTES = _U32.pack(0)


@dataclasses.dataclass(frozen=True, slots=True)
class _Plan:
    cls: type
    tag: int
    names: tuple[str, ...]
    values: Callable[[Any], tuple[Any, ...]]  # all field values, in order, in one call
    encoders: tuple[Encoder, ...]
    decoders: tuple[Decoder, ...]


_PLANS: dict[type, _Plan] = {}
_TAGS: dict[int, type] = {}
_EMPTIED: dict[tuple[type, str], _Plan] = {}
_UNION_DECODERS: dict[object, Decoder] = {}


# --------------------------------------------------------------------------------------------------
# Public API


def encode(obj: object) -> bytes:
    """The canonical encoding of a ledger object."""
    out = bytearray()
    _encode_object(obj, out)
    return bytes(out)


def encode_with_empty(obj: object, field: str) -> bytes:
    """The encoding of ``obj`` as if its ``bytes`` field ``field`` were ``b""``.

    This is a signed object's *signing message*: the signature never covers itself.
    """
    plan = _emptied_plan(type(obj), field)
    out = bytearray((plan.tag,))
    for value, encoder in zip(plan.values(obj), plan.encoders, strict=True):
        encoder(value, out)
    return bytes(out)


def compute_hash(obj: object) -> bytes:
    """SHA-256 of the canonical encoding: the object's 32-byte identity."""
    return hashlib.sha256(encode(obj)).digest()


@overload
def decode(cls: type[T], data: bytes | bytearray | memoryview) -> T: ...
@overload
def decode(cls: object, data: bytes | bytearray | memoryview) -> Any: ...
def decode(cls: object, data: bytes | bytearray | memoryview) -> Any:
    """Decode ``data`` as an instance of ``cls`` (a ledger class, or a union of them).

    Raises :class:`DecodeError` unless ``data`` is exactly one canonical encoding.
    """
    if isinstance(data, bytearray | memoryview):
        data = bytes(data)
    if not isinstance(data, bytes):
        raise DecodeError(f"expected bytes to decode, got {type(data).__name__}")
    decoder = _decoder_for(cls)
    try:
        value, end = decoder(data, 0)
    except DecodeError:
        raise
    except (struct.error, IndexError) as exc:
        raise DecodeError(f"truncated {_type_name(cls)} encoding ({len(data)} bytes)") from exc
    if end != len(data):
        raise DecodeError(
            f"{len(data) - end} trailing bytes after a {_type_name(cls)} encoding of {end} bytes"
        )
    return value


# --------------------------------------------------------------------------------------------------
# Plans


def _plan(cls: type) -> _Plan:
    plan = _PLANS.get(cls)
    if plan is None:
        plan = _compile_plan(cls)
    return plan


def _compile_plan(cls: type) -> _Plan:
    tag = getattr(cls, "TAG", None)
    if not dataclasses.is_dataclass(cls) or not isinstance(tag, int) or isinstance(tag, bool):
        raise LedgerError(f"{_type_name(cls)} is not a ledger object (a dataclass with a TAG)")
    if not 0 <= tag <= 255:
        raise TypeError(f"{cls.__name__}.TAG must fit in a u8, got {tag}")
    holder = _TAGS.setdefault(tag, cls)
    if holder is not cls:
        raise TypeError(f"{cls.__name__} and {holder.__name__} share TAG {tag}")
    hints = typing.get_type_hints(cls)
    fields = dataclasses.fields(cls)
    names = tuple(field.name for field in fields)
    compiled = [_compile(hints[name], f"{cls.__name__}.{name}") for name in names]
    plan = _Plan(
        cls=cls,
        tag=tag,
        names=names,
        values=_values_getter(names),
        encoders=tuple(encoder for encoder, _ in compiled),
        decoders=tuple(decoder for _, decoder in compiled),
    )
    _PLANS[cls] = plan
    return plan


def _values_getter(names: tuple[str, ...]) -> Callable[[Any], tuple[Any, ...]]:
    if len(names) > 1:
        return operator.attrgetter(*names)
    getters = [operator.attrgetter(name) for name in names]  # 0 or 1 field: always a tuple
    return lambda obj: tuple(getter(obj) for getter in getters)


def _emptied_plan(cls: type, field: str) -> _Plan:
    plan = _EMPTIED.get((cls, field))
    if plan is None:
        base = _plan(cls)
        if field not in base.names or typing.get_type_hints(cls)[field] is not bytes:
            raise LedgerError(f"{cls.__name__} has no bytes field {field!r}")
        index = base.names.index(field)
        encoders = list(base.encoders)
        encoders[index] = _encode_empty_bytes
        plan = dataclasses.replace(base, encoders=tuple(encoders))
        _EMPTIED[(cls, field)] = plan
    return plan


def _compile(tp: Any, where: str) -> tuple[Encoder, Decoder]:
    """One encoder and one decoder for a field of type ``tp`` (``where`` names it in errors)."""
    if tp is bool:
        return _encode_bool(where), _decode_bool
    if tp is int:
        return _encode_int(where), _decode_int
    if tp is bytes:
        return _encode_bytes(where), _decode_bytes
    if tp is str:
        return _encode_str(where), _decode_str
    origin = typing.get_origin(tp)
    if origin is tuple:
        return _compile_tuple(typing.get_args(tp), where)
    if origin is typing.Union or origin is types.UnionType:
        return _compile_union(typing.get_args(tp), where)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp) and hasattr(tp, "TAG"):
        return _encode_member(frozenset((tp,)), where), _decode_union(tp)
    raise TypeError(f"{where}: the ledger codec cannot encode {tp!r}")


def _compile_tuple(args: tuple[Any, ...], where: str) -> tuple[Encoder, Decoder]:
    if len(args) == 2 and args[1] is Ellipsis:
        item_encoder, item_decoder = _compile(args[0], f"{where}[]")
        return _encode_sequence(item_encoder, where), _decode_sequence(item_decoder)
    compiled = [_compile(arg, f"{where}[{i}]") for i, arg in enumerate(args)]
    return (
        _encode_fixed(tuple(e for e, _ in compiled), where),
        _decode_fixed(tuple(d for _, d in compiled), where),
    )


def _compile_union(args: tuple[Any, ...], where: str) -> tuple[Encoder, Decoder]:
    members = tuple(arg for arg in args if arg is not type(None))
    if len(members) < len(args):
        inner = members[0] if len(members) == 1 else typing.Union[members]  # noqa: UP007
        inner_encoder, inner_decoder = _compile(inner, where)
        return _encode_optional(inner_encoder), _decode_optional(inner_decoder)
    for member in members:
        if not (isinstance(member, type) and dataclasses.is_dataclass(member)):
            raise TypeError(f"{where}: unions may only hold ledger classes, not {member!r}")
    return _encode_member(frozenset(members), where), _decode_union(typing.Union[members])  # noqa: UP007


# --------------------------------------------------------------------------------------------------
# Encoders (each appends to ``out``)


def _encode_object(obj: object, out: bytearray) -> None:
    plan = _PLANS.get(type(obj)) or _plan(type(obj))
    out.append(plan.tag)
    for value, encoder in zip(plan.values(obj), plan.encoders, strict=True):
        encoder(value, out)


def _encode_int(where: str) -> Encoder:
    pack = _I64.pack

    def encode_int(value: Any, out: bytearray) -> None:
        if type(value) is not int:
            raise LedgerError(f"{where} must be an int, got {type(value).__name__}")
        try:
            out += pack(value)
        except struct.error:
            raise LedgerError(f"{where} = {value} is outside the i64 range") from None

    return encode_int


def _encode_bool(where: str) -> Encoder:
    def encode_bool(value: Any, out: bytearray) -> None:
        if type(value) is not bool:
            raise LedgerError(f"{where} must be a bool, got {type(value).__name__}")
        out.append(1 if value else 0)

    return encode_bool


def _encode_bytes(where: str) -> Encoder:
    pack = _U32.pack

    def encode_bytes(value: Any, out: bytearray) -> None:
        if type(value) is not bytes:
            raise LedgerError(f"{where} must be bytes, got {type(value).__name__}")
        try:
            out += pack(len(value))
        except struct.error:
            raise LedgerError(f"{where} is longer than 2**32 - 1 bytes") from None
        out += value

    return encode_bytes


def _encode_empty_bytes(value: Any, out: bytearray) -> None:
    out += _EMPTY_BYTES


def _encode_str(where: str) -> Encoder:
    encode_bytes = _encode_bytes(where)

    def encode_str(value: Any, out: bytearray) -> None:
        if type(value) is not str:
            raise LedgerError(f"{where} must be a str, got {type(value).__name__}")
        try:
            raw = value.encode("utf-8")
        except UnicodeEncodeError:
            raise LedgerError(f"{where} is not valid Unicode (lone surrogate)") from None
        encode_bytes(raw, out)

    return encode_str


def _encode_sequence(item_encoder: Encoder, where: str) -> Encoder:
    pack = _U32.pack

    def encode_sequence(value: Any, out: bytearray) -> None:
        if type(value) is not tuple:
            raise LedgerError(f"{where} must be a tuple, got {type(value).__name__}")
        out += pack(len(value))
        for item in value:
            item_encoder(item, out)

    return encode_sequence


def _encode_fixed(item_encoders: tuple[Encoder, ...], where: str) -> Encoder:
    header = _U32.pack(len(item_encoders))

    def encode_fixed(value: Any, out: bytearray) -> None:
        if type(value) is not tuple or len(value) != len(item_encoders):
            raise LedgerError(f"{where} must be a tuple of {len(item_encoders)} items")
        out += header
        for item, item_encoder in zip(value, item_encoders, strict=True):
            item_encoder(item, out)

    return encode_fixed


def _encode_optional(inner: Encoder) -> Encoder:
    def encode_optional(value: Any, out: bytearray) -> None:
        if value is None:
            out.append(0)
        else:
            out.append(1)
            inner(value, out)

    return encode_optional


def _encode_member(members: frozenset[type], where: str) -> Encoder:
    def encode_member(value: Any, out: bytearray) -> None:
        if type(value) not in members:
            expected = " | ".join(sorted(member.__name__ for member in members))
            raise LedgerError(f"{where} must be {expected}, got {type(value).__name__}")
        _encode_object(value, out)

    return encode_member


# --------------------------------------------------------------------------------------------------
# Decoders (each takes the data and a position, returns the value and the next position)

_unpack_i64 = _I64.unpack_from
_unpack_u32 = _U32.unpack_from


def _decode_int(data: bytes, pos: int) -> tuple[Any, int]:
    return _unpack_i64(data, pos)[0], pos + 8


def _decode_bool(data: bytes, pos: int) -> tuple[Any, int]:
    byte = data[pos]
    if byte > 1:
        raise DecodeError(f"bool byte at offset {pos} is {byte}, not 0 or 1")
    return byte == 1, pos + 1


def _decode_bytes(data: bytes, pos: int) -> tuple[Any, int]:
    (length,) = _unpack_u32(data, pos)
    start = pos + 4
    end = start + length
    if end > len(data):
        raise DecodeError(f"length {length} at offset {pos} runs past the end of the data")
    return data[start:end], end


def _decode_str(data: bytes, pos: int) -> tuple[Any, int]:
    raw, end = _decode_bytes(data, pos)
    try:
        return raw.decode("utf-8"), end
    except UnicodeDecodeError:
        raise DecodeError(f"string at offset {pos} is not valid UTF-8") from None


def _decode_sequence(item_decoder: Decoder) -> Decoder:
    def decode_sequence(data: bytes, pos: int) -> tuple[Any, int]:
        (count,) = _unpack_u32(data, pos)
        pos += 4
        if count > len(data) - pos:  # every item takes at least one byte
            raise DecodeError(f"item count {count} at offset {pos - 4} exceeds the data")
        items = []
        for _ in range(count):
            item, pos = item_decoder(data, pos)
            items.append(item)
        return tuple(items), pos

    return decode_sequence


def _decode_fixed(item_decoders: tuple[Decoder, ...], where: str) -> Decoder:
    def decode_fixed(data: bytes, pos: int) -> tuple[Any, int]:
        (count,) = _unpack_u32(data, pos)
        if count != len(item_decoders):
            raise DecodeError(f"{where}: item count {count}, expected {len(item_decoders)}")
        pos += 4
        items = []
        for item_decoder in item_decoders:
            item, pos = item_decoder(data, pos)
            items.append(item)
        return tuple(items), pos

    return decode_fixed


def _decode_optional(inner: Decoder) -> Decoder:
    def decode_optional(data: bytes, pos: int) -> tuple[Any, int]:
        flag = data[pos]
        if flag == 0:
            return None, pos + 1
        if flag == 1:
            return inner(data, pos + 1)
        raise DecodeError(f"optional flag at offset {pos} is {flag}, not 0 or 1")

    return decode_optional


def _decode_union(union: object) -> Decoder:
    """A decoder that reads a tag and dispatches to that member's plan.

    Members' plans are compiled lazily, on first decode, so classes may refer to classes
    defined after them.
    """
    members: tuple[type, ...] = typing.get_args(union) or (union,)
    by_tag: dict[int, type] = {}

    def decode_member(data: bytes, pos: int) -> tuple[Any, int]:
        if not by_tag:
            by_tag.update((_plan(member).tag, member) for member in members)
        tag = data[pos]
        cls = by_tag.get(tag)
        if cls is None:
            raise DecodeError(f"unknown tag {tag} at offset {pos} (expected {_type_name(union)})")
        plan = _PLANS[cls]
        pos += 1
        values = []
        for decoder in plan.decoders:
            value, pos = decoder(data, pos)
            values.append(value)
        return cls(*values), pos

    return decode_member


def _decoder_for(cls: object) -> Decoder:
    decoder = _UNION_DECODERS.get(cls)
    if decoder is None:
        origin = typing.get_origin(cls)
        if origin is typing.Union or origin is types.UnionType:
            members = typing.get_args(cls)
        elif isinstance(cls, type):
            members = (cls,)
        else:
            raise LedgerError(f"cannot decode as {cls!r}: not a ledger class or union of them")
        for member in members:
            _plan(member)  # refuses non-ledger classes early, with a clear message
        decoder = _decode_union(cls)
        _UNION_DECODERS[cls] = decoder
    return decoder


def _type_name(tp: object) -> str:
    args = typing.get_args(tp)
    if args:
        return " | ".join(getattr(arg, "__name__", repr(arg)) for arg in args)
    return getattr(tp, "__name__", repr(tp))
