"""The one exception type for bad user input, its one formatter, and the words of a library's error
worth showing a user."""
from __future__ import annotations

import re

LISTED_PROBLEMS = 20  # a longer list of problems is cut here, with the count of the rest


class InputError(Exception):
    """Bad input from the user: a dataset, an image, weights, a constant, a folder.

    main.py prints the message, one sentence saying what is wrong and how to fix
    it, and exits with status 1; no traceback. Raise it with a message a user can
    act on, naming the offending path or value.
    """

    @classmethod
    def listed(cls, summary: str, problems: list[str]) -> InputError:
        """One error for a list of problems, each a sentence naming its file.

        A single problem is the whole message; several follow `summary`, one a line,
        the first LISTED_PROBLEMS of them, so that a user sees every broken file at once.
        """
        if len(problems) == 1:
            return cls(problems[0])
        lines = [summary] + [f"  {problem}" for problem in problems[:LISTED_PROBLEMS]]
        if len(problems) > LISTED_PROBLEMS:
            lines.append(f"  ... and {len(problems) - LISTED_PROBLEMS} more.")
        return cls("\n".join(lines))


def reason(error: Exception) -> str:
    """The cause of `error` in a few words, to put in parentheses in an InputError: the system's words
    for an OSError, else the first sentence of its message without the source location that torch's
    and gloo's C++ code put first ("[enforce fail at inline_container.cc:672] . unexpected pos ...")."""
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    text = re.sub(r"^\[[^\]]*\][\s.]*", "", str(error).strip())
    return text.split(". ")[0].splitlines()[0] if text else type(error).__name__
