"""Placeholder."""


def run() -> None:
    """X."""


arun = run
