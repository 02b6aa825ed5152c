"""The ``itkm`` command's argument types and checks: whole numbers with a floor, identity numbers,
text that must be UTF-8, a name that starts with ``-``, and empty path arguments -- each refused
in one line before anything runs.  The parser itself is ``cli.build_parser``."""

from __future__ import annotations

import argparse

from .console import shown
from .errors import ItkmError

def whole_number(text: str, least: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"{text} must be {least} or more")
    return value


def positive_int(text: str) -> int:
    """argparse type: a whole number >= 1 (``--top-k -1`` used to return everything)."""
    return whole_number(text, 1)


def non_negative_int(text: str) -> int:
    """argparse type: a whole number >= 0."""
    return whole_number(text, 0)


def identity_number(text: str, what: str = "an identity") -> int:
    """An identity number as typed (plain ASCII digits, at most 18 of them); else one line."""
    from .session import image_id_of

    value = image_id_of(text)
    if value is None:
        raise ItkmError(f"{what}: {shown(repr(text), 60)} is not an identity number (a whole number from "
                        "'itkm identities WORKSPACE')")
    return value


def identity_type(text: str) -> int:
    """argparse type of ``--merge``'s identity numbers."""
    try:
        return identity_number(text)
    except ItkmError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def text_arg(value: str | None, what: str) -> str | None:
    """A text argument (a name, a note, a site) that must be UTF-8 text: bytes that are not (a
    Latin-1 terminal, a script) come in as surrogate escapes and are refused in one line before
    anything is written (SQLite would refuse them half-way through)."""
    if value is None:
        return None
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ItkmError(f"{what} {shown(repr(value), 80)} is not UTF-8 text; type it again in a UTF-8 terminal") from None
    return value


def dashed_name(argv: list[str]) -> list[str]:
    """``identities ... --name X -- -NAME``: a name that starts with ``-`` (argparse would take it
    for an option).  The ``--`` and the name become one value argparse keeps as it is."""
    out, i = list(argv), 0
    while i < len(out) - 3:
        if out[i] == "--name" and out[i + 2] == "--":
            out[i + 2 : i + 4] = [DASHED + out[i + 3]]
        i += 1
    return out


#: Marks a value that followed ``--`` (argv can never hold a NUL character).
DASHED = "\0"


#: Positional path arguments; an empty one would otherwise mean the current folder ("" -> ".").
PATH_ARGS = {"workspace": "WORKSPACE", "dir": "DIR", "folders": "FOLDER", "out": "the output file"}


def refuse_empty_paths(a) -> None:
    for attr, name in PATH_ARGS.items():
        values = getattr(a, attr, None)
        for v in values if isinstance(values, list) else [values]:
            if v is not None and not str(v).strip():
                hint = "name a new file, e.g. tracks.csv" if attr == "out" else "give a path (. is the current folder)"
                raise ItkmError(f"{name} is empty; {hint}")
