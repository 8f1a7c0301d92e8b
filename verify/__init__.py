"""Verification (``d3d.verify``): numerical parity of an exported model across backends.

The top layer beside the CLI: it may import ``d3d``, ``d3d.export`` and ``d3d.runtime``; nothing below
imports it."""

from d3d.verify.parity import (
    TOLERANCES,
    VERIFY_BACKENDS,
    VerifyOptions,
    VerifyResult,
    format_table,
    profile_for,
    report_json,
    verify,
)

__all__ = [
    "TOLERANCES",
    "VERIFY_BACKENDS",
    "VerifyOptions",
    "VerifyResult",
    "format_table",
    "profile_for",
    "report_json",
    "verify",
]
