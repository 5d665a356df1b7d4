"""The error every layer of a run may raise for bad input found before training: `UsageError`."""


class UsageError(Exception):
    """Bad input found before training (runtime, tracking, checkpoints); the runner exits 2."""
