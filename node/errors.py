"""User-facing errors: what went wrong and the fix, printed without a traceback."""


class SwarmtrainError(Exception):
    """An error the user can fix; `help` names the fix."""

    def __init__(self, message: str, help: str = ""):
        super().__init__(message)
        self.help = help

    def render(self) -> str:
        text = f"error: {self}"
        if self.help:
            text += "\n  - help: " + self.help.replace("\n", "\n    ")
        return text
