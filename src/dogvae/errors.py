"""The one exception family the CLI turns into a single clear error line (no traceback)."""


class DogvaeError(Exception):
    """A problem the user can fix: bad input, a missing file, an incompatible checkpoint."""


class DataError(DogvaeError):
    """A data set cannot be read as a whole (e.g. `labels.csv` lacks its `id`/`breed` columns)."""


class BadImage(DogvaeError):
    """One image file cannot be used; `reason` is a short stable key such as `truncated`."""

    def __init__(self, path, reason: str, detail: str = ""):
        self.path = str(path)
        self.reason = reason
        self.detail = detail
        super().__init__(f"{self.path}: {reason}" + (f" ({detail})" if detail else ""))


class CheckpointError(DogvaeError):
    """A run folder or checkpoint is missing, incomplete, or does not match its model."""


class TrainingError(DogvaeError):
    """Training cannot go on (e.g. the loss became NaN); the last good checkpoint is kept."""
