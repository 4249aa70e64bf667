"""Errors of the diagnostic datasets, each with a message a user or a planner can act on."""

from __future__ import annotations

from pathlib import Path


class DataError(ValueError):
    """Base of the errors raised while finding, reading or using diagnostic data."""


class DataFormatError(DataError):
    """A data file that does not have the expected format.

    The message names the file, the line (where one applies), what was wrong and what is expected.
    """

    def __init__(
        self, path: str | Path, problem: str, expected: str, line: int | None = None
    ) -> None:
        self.path = str(path)
        self.line = line
        self.problem = problem
        self.expected = expected
        where = self.path if line is None else f"{self.path}, line {line}"
        super().__init__(f"{where}: {problem}. Expected: {expected}")


class DataUnavailableError(DataError):
    """Data that cannot be had here: an optional package is missing, or the data is only online."""


class DataSpecError(DataError):
    """A ``--data`` spec that names no data RankScope can read."""


class UnknownPerturbationError(DataError, KeyError):
    """An (axiom, variant) that no perturbation is registered under, or one a source cannot give."""

    def __str__(self) -> str:
        return str(self.args[0])


class AlignmentError(DataError):
    """A pair whose baseline and perturbed text cannot be given the same number of tokens."""


class AlignmentWarning(UserWarning):
    """Pairs were dropped from a pair set because they could not be aligned."""
