"""What the search commands share on the command line: one-line errors (exit 2) and checked numbers."""
from __future__ import annotations

import argparse
import math
from typing import Callable, NoReturn

EXIT_BAD_INPUT = 2


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line naming the flag, with exit status 2."""

    def __init__(self, **kwargs) -> None:
        kwargs.setdefault("formatter_class", argparse.ArgumentDefaultsHelpFormatter)
        super().__init__(**kwargs)

    def error(self, message: str) -> NoReturn:  # one line, not usage + message
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message}\n")


def _checked(convert: Callable[[str], float], noun: str, ok: Callable[[float], bool],
             requirement: str) -> Callable[[str], float]:
    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {noun}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"{text} must be {requirement}")
        return value
    return parse


positive_int = _checked(int, "an integer", lambda v: v >= 1, ">= 1")
non_negative_int = _checked(int, "an integer", lambda v: v >= 0, ">= 0")
positive_float = _checked(float, "a number", lambda v: math.isfinite(v) and v > 0, "a finite number > 0")
non_negative_float = _checked(float, "a number", lambda v: math.isfinite(v) and v >= 0, "a finite number >= 0")
