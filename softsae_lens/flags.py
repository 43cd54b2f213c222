"""Command lines generated from config dataclasses (simple_parsing, as SAELens's CLI): ``--help``
from the field docstrings, ``--a-b`` with ``--a_b`` accepted too, a bad value a one-line error."""

from __future__ import annotations

import argparse
import inspect
import re
import sys
from collections.abc import Sequence
from typing import Any

__all__ = [
    "comma_separated",
    "config_parser",
    "one_or_more",
    "optional",
    "parse_config",
    "spell_flags",
    "switch",
]


def spell_flags(argv: Sequence[str], sep: str) -> list[str]:
    """``argv`` with every ``--flag`` name spelt with ``sep`` between words (``"-"``: ``--a-b``;
    ``"_"``: SAELens's ``--a_b``), so either spelling works; values are left alone."""
    other = "_" if sep == "-" else "-"
    return [re.sub(r"^--[^=]+", lambda m: m[0][:2] + m[0][2:].replace(other, sep), a) for a in argv]


def switch() -> Any:
    """A field for an on/off flag that takes no value (argparse's ``store_true``, default off).

    simple_parsing's own bool flags take an optional ``true``/``false`` after them, so one written
    before a positional argument (``convert --overwrite ae.pt out``) would swallow it."""
    from simple_parsing import field

    return field(default=False, action="store_true")


def comma_separated(default: tuple[Any, ...], parse: Any, metavar: str) -> Any:
    """A field for a flag taking one comma-separated value (``--targets 16,32,64``) that
    ``parse`` turns into a tuple (raising ``argparse.ArgumentTypeError`` for a bad one)."""
    from simple_parsing import field

    return field(default=default, type=parse, nargs=None, metavar=metavar)


def names_from(allowed: Sequence[str], text: str, noun: str) -> tuple[str, ...]:
    """``text``'s comma-separated names, each one of ``allowed``, for a ``comma_separated``
    flag's parser.

    Raises:
        argparse.ArgumentTypeError: naming the unknown names and the allowed ones.
    """
    values = tuple(v.strip() for v in text.split(",") if v.strip())
    unknown = [v for v in values if v not in allowed]
    if not values or unknown:
        raise argparse.ArgumentTypeError(
            f"unknown {noun}(s) {unknown or text!r}; choose from {','.join(allowed)}"
        )
    return values


def optional(metavar: str) -> Any:
    """A field for a flag that is unset (``None``) unless given, and then takes one value
    (simple_parsing would otherwise let an ``X | None`` flag be given with no value)."""
    from simple_parsing import field

    return field(default=None, nargs=None, metavar=metavar)


def one_or_more(default: Sequence[Any] | None, metavar: str, **argparse_options: Any) -> Any:
    """A field for a flag taking one or more values after it (``--lrs 1e-3 3e-3``): a list,
    a fresh copy of ``default`` when the flag is not given (``None`` stays ``None``: unset).
    ``argparse_options`` (``type``, ``choices``) go to ``add_argument``."""
    from simple_parsing import field

    if "choices" not in argparse_options:  # simple_parsing shows a plain metavar as it is
        metavar = f"{metavar} [{metavar} ...]"
    if default is None:
        return field(default=None, nargs="+", metavar=metavar, **argparse_options)
    return field(
        default_factory=lambda: list(default),
        nargs="+",
        required=False,  # simple_parsing makes any nargs="+" flag required otherwise
        metavar=metavar,
        **argparse_options,
    )


def config_parser(
    config_class: type, prog: str, description: str | None = None, default: Any = None
) -> Any:
    """A parser with a flag per field of ``config_class`` (parsed into ``cfg``); ``default``, an
    instance of it, supplies the defaults of its command-line fields instead of the class's."""
    from simple_parsing import ArgumentParser, DashVariant

    parser = ArgumentParser(
        prog=prog,
        description=description or inspect.getdoc(config_class),
        add_option_string_dash_variants=DashVariant.DASH,
        add_config_path_arg=False,
    )
    parser.add_arguments(config_class, dest="cfg", default=default)
    return parser


def parse_config(
    parser: Any, argv: Sequence[str] | None, usage_on_error: bool = False
) -> argparse.Namespace:
    """Parse ``argv``; a ValueError the config's ``__post_init__`` raises for a bad value becomes
    ``SystemExit`` with its one-line message (no traceback for a user's mistake), or, with
    ``usage_on_error``, argparse's usage line and ``error: <message>`` (exit status 2)."""
    try:
        return parser.parse_args(spell_flags(sys.argv[1:] if argv is None else argv, "-"))
    except ValueError as err:
        if usage_on_error:
            parser.error(str(err))
        raise SystemExit(str(err)) from None
