"""Errors the feedback store raises on purpose.

Every one derives from ``FeedbackStoreError``, so a labelling server can answer a
bad request without catching unrelated failures; those that are also a plain
``ValueError`` or ``LookupError`` say so, for callers that already handle those.
"""

from __future__ import annotations


class FeedbackStoreError(Exception):
    """Base of every error the feedback store raises on purpose."""


class NotAFeedbackStoreError(FeedbackStoreError):
    """The file is not a feedback store (not SQLite, or another program's database)."""


class SchemaVersionError(FeedbackStoreError):
    """The store was written by a newer mbrm with a schema this one cannot read."""


class ShapeMismatchError(FeedbackStoreError, ValueError):
    """Segment arrays whose sizes differ from the store's state or action size."""


class UnknownIdError(FeedbackStoreError, LookupError):
    """No segment or query with that id."""


class InvalidLabelError(FeedbackStoreError, ValueError):
    """A label value that does not fit its query, or a query that takes no label."""


class LeaseConflictError(FeedbackStoreError):
    """The query is leased to another annotator."""


class InvalidExportError(FeedbackStoreError):
    """An export file that is corrupt, foreign, or inconsistent."""


__all__ = [
    "FeedbackStoreError",
    "InvalidExportError",
    "InvalidLabelError",
    "LeaseConflictError",
    "NotAFeedbackStoreError",
    "SchemaVersionError",
    "ShapeMismatchError",
    "UnknownIdError",
]
