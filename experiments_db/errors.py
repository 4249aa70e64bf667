"""The exceptions of the evidence store. Every one derives from :class:`StoreError`."""


class StoreError(Exception):
    """Base class: a user-facing problem with the evidence store (message is meant to be shown)."""


class DatabaseURLError(StoreError):
    """The database URL is malformed, names an unsupported dialect, or cannot be reached."""


class NotFoundError(StoreError):
    """A row that the caller named by id does not exist."""


class CriterionLockedError(StoreError):
    """The pre-registered criterion of a hypothesis cannot change once an experiment has started."""


class ExperimentStateError(StoreError):
    """The experiment is not in a state that allows the requested transition."""


class EvidenceWriteError(StoreError):
    """Recording an experiment's evidence failed; nothing was written and the experiment failed."""


class UnknownEvidenceError(StoreError):
    """A verdict or a query cited evidence ids that are not stored."""

    def __init__(self, message: str, missing: list[int]) -> None:
        super().__init__(message)
        self.missing = missing


class ReviewError(StoreError, ValueError):
    """A review breaks the review rules: its decision is not ``accept`` or ``dispute``, it names
    no reviewer, or it disputes a verdict without a comment."""


class ArtifactError(StoreError):
    """A problem with an artifact file."""


class ArtifactMissingError(ArtifactError):
    """An artifact file referenced by the database is not in the artifact store."""


class ArtifactIntegrityError(ArtifactError):
    """An artifact file's content no longer matches the sha256 it was stored under."""

    def __init__(self, path: str, expected: str, actual: str) -> None:
        super().__init__(
            f"artifact file {path} is corrupted: expected sha256 {expected}, found {actual}. "
            "The file no longer matches the evidence that cites it; restore it from a bundle or "
            "backup, or re-run the experiment."
        )
        self.path = path
        self.expected = expected
        self.actual = actual


class BundleError(StoreError):
    """An investigation bundle is malformed or incompatible."""


class SchemaVersionError(StoreError):
    """The database schema is at a revision this version of RankScope cannot migrate."""
