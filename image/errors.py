"""The one error the image tools raise for users: what happened, and what to run about it."""


class ImageError(Exception):
    """A failure meant for the user: a one-line `message` and a `hint` saying what to run."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} (hint: {self.hint})" if self.hint else self.message
