"""Errors the user can act on. The CLI prints their message without a traceback."""


class NdaeError(Exception):
    """Base class: the message must name the file or field at fault and the problem."""


class InvalidImageError(NdaeError):
    """A NIfTI file that cannot be used (unreadable, wrong shape, non-finite, ...)."""


class ManifestError(NdaeError):
    """A manifest with missing columns or bad rows; lists every bad row at once."""


class PrivacyBudgetExceeded(NdaeError):
    """A privacy-consuming step would take a site past its (epsilon, delta) budget."""


class LedgerError(NdaeError):
    """A privacy ledger whose hash chain does not verify (edited, truncated, reordered)."""
