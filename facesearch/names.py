"""Identity names: what a valid one is, and which spellings of one are the same name.

Pure string rules, shared by the store (what it accepts and how it finds an identity), enroll and
``align`` (which check folder names as enroll does) and the gallery facade.
"""

from __future__ import annotations

import unicodedata

from facesearch.errors import InvalidIdentityError

#: the longest identity name, in characters (the ``identities.name`` column's length)
MAX_IDENTITY_LENGTH = 200


def has_surrogates(text: str) -> bool:
    """Whether ``text`` holds lone surrogates: how Python spells the bytes of a file name, a folder name
    or a command-line argument that are not valid UTF-8 (``os.fsdecode``'s ``surrogateescape``)."""
    return any("\ud800" <= c <= "\udfff" for c in text)


def printable(text: str) -> str:
    """``text`` as it can be printed and stored: the bytes that are not UTF-8 written as ``\\xNN``."""
    if not has_surrogates(text):
        return text
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def validate_identity(name: str) -> str:
    """Return ``name`` if it is a safe identity name, else raise InvalidIdentityError."""
    if not isinstance(name, str) or not name.strip():
        raise InvalidIdentityError("identity name is empty")
    if has_surrogates(name):
        raise InvalidIdentityError(
            f"identity name '{printable(name)}' is not valid Unicode text: its bytes are not UTF-8 (a folder "
            "or argument written in another encoding?); rename it")
    if name != name.strip():
        raise InvalidIdentityError(f"identity name {name!r} has leading or trailing spaces")
    if len(name) > MAX_IDENTITY_LENGTH or len(nfc_name(name)) > MAX_IDENTITY_LENGTH:
        raise InvalidIdentityError(f"identity name longer than {MAX_IDENTITY_LENGTH} characters"
                                   + ("" if len(name) > MAX_IDENTITY_LENGTH else
                                      f" once composed (Unicode NFC, as it is stored: {len(nfc_name(name))})"))
    if "/" in name or "\\" in name:
        raise InvalidIdentityError(f"identity name {name!r} contains a path separator")
    if name in (".", "..") or name.startswith("."):
        raise InvalidIdentityError(f"identity name {name!r} may not start with '.'")
    if any(unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") for c in name):
        raise InvalidIdentityError(f"identity name {name!r} contains control characters")
    return name


def nfc_name(name: str) -> str:
    """One form for names that look the same: macOS writes folder names decomposed (e + combining
    accent), keyboards type them composed. New identities are stored in NFC."""
    return unicodedata.normalize("NFC", name) if isinstance(name, str) else name


def spellings(name: str) -> list[str]:
    """``name``, its NFC form, its NFD form (a gallery from before names were normalised may hold
    either): the first one stored is the identity meant."""
    return list(dict.fromkeys([name, nfc_name(name), unicodedata.normalize("NFD", name)]))
