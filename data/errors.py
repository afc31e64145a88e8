"""The one error every loader raises: it names the file and what is wrong with it."""
from pathlib import Path


class DatasetError(ValueError):
    """A dataset or text file is missing, truncated or malformed."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")
