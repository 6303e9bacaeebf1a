"""Helpers every figure of neuroprobe shares (a leaf module: only the standard library)."""
from __future__ import annotations

import textwrap

__all__ = ["wrap_to_figure"]


def wrap_to_figure(fig, text: str, fontsize: float) -> str:
    """``text`` broken into lines that fit the width of matplotlib figure ``fig`` at
    ``fontsize`` points (about 0.6 em a character, a quarter inch of margin each side; words
    longer than a line, such as checkpoint paths, are broken too).  Lines already in ``text``
    are kept.  For figure titles that name models and concept sets."""
    chars = max(16, int((fig.get_figwidth() - 0.5) * 72 / (0.6 * fontsize)))
    return "\n".join(line for para in str(text).split("\n")
                     for line in (textwrap.wrap(para, chars) or [""]))

