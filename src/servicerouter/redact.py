"""Secrets kept out of what servicerouter shows: ``--help``, error messages."""

from __future__ import annotations


def redact_url(text: str) -> str:
    """``text`` with a URL's ``user:password@`` shown as ``***@``.

    Everything before the last ``@`` goes, scheme aside: a password typed with a ``/``
    or an ``@`` that is not %-encoded must not show half of it (a path with an ``@`` is
    masked too, which costs nothing but detail). Text without an ``@`` is unchanged."""
    scheme, sep, rest = text.partition("://")
    if not sep:
        scheme, rest = "", text
    _, at, tail = rest.rpartition("@")
    return f"{scheme}{sep}***@{tail}" if at else text


def hidden(_: str) -> str:
    """How a secret's value is shown: not at all."""
    return "hidden"
