"""What every input must be beyond its struct's shape, checked in one place for HTTP and WebSocket alike.

- Free text (`Text`): the one type of every field a person types (names, origins, certificates, bank
  references, reasons). It refuses control characters: C0 (NUL, newline, ESC, ...), DEL, C1, and the
  invisible formatting characters that make text read differently from what it is (bidirectional
  controls U+202A-U+202E, U+2066-U+2069, the marks U+200E/U+200F/U+061C, line and paragraph separators,
  the byte-order mark). A refused field is 422 `control_characters`, naming the field.
- JSON objects with a key twice are 422 `duplicate_key`: msgspec (like most parsers) lets the last one
  win silently, so `"side":"sell","side":"buy"` would be a buy to us and a sell to a reader that keeps the
  first. `has_duplicate_keys` costs one generic decode; `has_duplicate_keys_of`, for WebSocket messages
  already decoded into a struct that omits its defaults, usually only a re-encoding of that struct.
- Integers in paths and query strings are ASCII digits (`check_integers`): msgspec's lax conversion,
  which those need to turn strings into the declared types, would take `1.0` and `1e3` as integers.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Annotated, Any, Final

import msgspec
import msgspec.inspect

from gateway.errors import ApiError, Code

__all__ = ["CONTROL_CHARACTERS", "TEXT_PATTERN", "TEXT_PATTERN_ECMA", "Text", "check_integers",
           "duplicate_key_error", "has_duplicate_keys", "has_duplicate_keys_of", "int_fields",
           "reencodes_no_longer", "refuse_control_characters", "validation_error"]

# The class of refused characters, as a regex character class body.
_REFUSED: Final = "\\x00-\\x1f\\x7f-\\x9f\\u061c\\u200e\\u200f\\u2028-\\u202e\\u2066-\\u2069\\ufeff"
CONTROL_CHARACTERS: Final = re.compile(f"[{_REFUSED}]")
# \A and \Z, not ^ and $, here and in every pattern of the API: msgspec matches with `re.search`, where
# `$` also matches before a final newline, which would let "abc\n" through. The OpenAPI document shows
# them as ECMA-262 `^...$` (where `$` is the end of the text), which means the same.
TEXT_PATTERN: Final = f"\\A[^{_REFUSED}]*\\Z"
TEXT_PATTERN_ECMA: Final = f"^[^{_REFUSED}]*$"
_TEXT_RULE: Final = ("no control characters (C0, DEL, C1) and no invisible formatting characters "
                     "(bidirectional controls and marks, line separators, byte-order mark)")
_PATTERN_SHOWN: Final = repr(TEXT_PATTERN)  # as msgspec quotes it in a ValidationError

# The type of every free-text field; bound its length where used:
# `origin: Annotated[Text, msgspec.Meta(min_length=1, max_length=200)]`.
Text = Annotated[str, msgspec.Meta(pattern=TEXT_PATTERN, description=f"free text: {_TEXT_RULE}")]


def refuse_control_characters(value: str, what: str) -> None:
    """For text that arrives outside a struct (a CSV row's fields): raise 422 like a `Text` field."""
    if CONTROL_CHARACTERS.search(value):
        raise ApiError(422, Code.CONTROL_CHARACTERS, f"{what}: {_TEXT_RULE}")


_AT_RE: Final = re.compile(r" - at `([^`]*)`$")


def validation_error(exc: msgspec.ValidationError, where: str) -> ApiError:
    """The 422 for a value of the wrong shape: `control_characters` when free text broke its rule, else
    `invalid` with msgspec's own message (which names the field)."""
    text = str(exc)
    if _PATTERN_SHOWN in text:
        at = _AT_RE.search(text)
        field = at.group(1) if at else "a text field"
        return ApiError(422, Code.CONTROL_CHARACTERS, f"invalid {where}: {field}: {_TEXT_RULE}")
    return ApiError(422, Code.INVALID, f"invalid {where}: {text}")


# -- duplicate keys -----------------------------------------------------------------------------------

_generic = msgspec.json.Decoder()


def has_duplicate_keys(raw: bytes) -> bool:
    """Does any JSON object in `raw` (already decoded once, so well-formed and bounded in depth) name a key
    twice?

    The common case costs one generic decode and a byte count: every key is followed by a colon, so a
    flat object whose distinct keys number as many as the colons in the text has no key twice (colons
    inside strings or nested objects only add to the count). Anything else gets the exact check.
    """
    colons = raw.count(b":")
    if colons < 2:
        return False
    decoded = _generic.decode(raw)
    if decoded.__class__ is dict and len(decoded) == colons:
        return False
    return _exact_duplicates(raw)


_encode_json: Final = msgspec.json.Encoder().encode
_mi: Final = msgspec.inspect
_COMPACT_LEAVES: Final = (_mi.StrType, _mi.IntType, _mi.BoolType, _mi.NoneType, _mi.EnumType, _mi.LiteralType)
_compact: dict[type, bool] = {}  # struct type -> `reencodes_no_longer` of it


def has_duplicate_keys_of(raw: bytes, decoded: msgspec.Struct) -> bool:
    """`has_duplicate_keys(raw)` for `raw` already decoded into `decoded`, a struct whose config omits
    default values (`omit_defaults=True`): on the WebSocket order path, usually for a re-encoding instead
    of a generic decode.

    Re-encoded, the struct names once each key `raw` gave a value other than its default, each value
    in its shortest form when the struct's types allow no other (`reencodes_no_longer`) and `raw` has no
    backslash (no escapes, which re-encode shorter or longer). Then the re-encoding is never longer than
    `raw`, and as long only if `raw` holds exactly the same pairs, compact: a key named twice, a default
    given or white space makes `raw` longer. Anything but equal lengths takes the exact check.
    """
    cls = decoded.__class__
    compact = _compact.get(cls)
    if compact is None:
        compact = _compact[cls] = reencodes_no_longer(_mi.type_info(cls))
    if compact and len(raw) == len(_encode_json(decoded)) and b"\\" not in raw:
        return False
    return has_duplicate_keys(raw)


def reencodes_no_longer(info: msgspec.inspect.Type) -> bool:
    """Does every value of this type, read from JSON without escapes, encode again to no more bytes than
    it was read from? Strings, integers, booleans, null, enums and literals, and lists, unions and
    structs of them; not floats or dates, which have many spellings, some shorter than ours."""
    if isinstance(info, _COMPACT_LEAVES):
        return True
    if isinstance(info, _mi.Metadata):  # a constrained type (Annotated with msgspec.Meta): its own type
        return reencodes_no_longer(info.type)
    if isinstance(info, _mi.UnionType):
        return all(reencodes_no_longer(t) for t in info.types)
    if isinstance(info, _mi.ListType):
        return reencodes_no_longer(info.item_type)
    if isinstance(info, _mi.StructType):
        return all(reencodes_no_longer(f.type) for f in info.fields)
    return False


class _Duplicate(Exception):
    pass


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise _Duplicate
    return result


def _exact_duplicates(raw: bytes) -> bool:
    try:
        json.loads(raw, object_pairs_hook=_pairs)
    except _Duplicate:
        return True
    except (ValueError, RecursionError):
        return False  # not ours to judge: the struct decoder already accepted it
    return False


def duplicate_key_error(where: str) -> ApiError:
    return ApiError(422, Code.DUPLICATE_KEY, f"invalid {where}: an object names the same key twice")


# -- integers in paths and query strings --------------------------------------------------------------

_INTEGER_RE: Final = re.compile(r"-?[0-9]{1,20}")


def int_fields(struct: type[msgspec.Struct]) -> frozenset[str]:
    """The fields of a path or query struct that hold an integer (possibly optional)."""
    info = msgspec.inspect.type_info(struct)
    assert isinstance(info, msgspec.inspect.StructType)
    return frozenset(field.encode_name for field in info.fields if _is_int(field.type))


def _is_int(t: msgspec.inspect.Type) -> bool:
    if isinstance(t, msgspec.inspect.Metadata):  # a description on the type
        return _is_int(t.type)
    if isinstance(t, msgspec.inspect.UnionType):
        return any(_is_int(member) for member in t.types)
    return isinstance(t, msgspec.inspect.IntType)


def check_integers(values: Mapping[str, str], names: frozenset[str], where: str) -> None:
    """Refuse (422) an integer field spelled as anything but ASCII digits (`1.0`, `1e3`)."""
    for name in names:
        value = values.get(name)
        if value is not None and not _INTEGER_RE.fullmatch(value):
            raise ApiError(422, Code.INVALID, f"invalid {where} parameters: {name} must be a whole number "
                                              f"in ASCII digits, not {value[:30]!r}")
