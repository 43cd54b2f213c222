"""Command lines generated from config dataclasses (simple_parsing, as SAELens's CLI): ``--help``
from the field docstrings, ``--a-b`` with ``--a_b`` accepted too, a bad value a one-line error."""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from typing import Any

__all__ = ["config_parser", "parse_config", "spell_flags"]


def spell_flags(argv: Sequence[str], sep: str) -> list[str]:
    """``argv`` with every ``--flag`` name spelt with ``sep`` between words (``"-"``: ``--a-b``;
    ``"_"``: SAELens's ``--a_b``), so either spelling works; values are left alone."""
    other = "_" if sep == "-" else "-"
    return [re.sub(r"^--[^=]+", lambda m: m[0][:2] + m[0][2:].replace(other, sep), a) for a in argv]


def config_parser(config_class: type, prog: str, description: str | None = None) -> Any:
    """A parser with a flag per field of ``config_class`` (parsed into ``cfg``)."""
    from simple_parsing import ArgumentParser, DashVariant

    parser = ArgumentParser(
        prog=prog,
        description=description or config_class.__doc__,
        add_option_string_dash_variants=DashVariant.DASH,
        add_config_path_arg=False,
    )
    parser.add_arguments(config_class, dest="cfg")
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
