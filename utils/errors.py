"""The one exception type for bad user input, and the words of a library's error worth showing a user."""
import re


class InputError(Exception):
    """Bad input from the user: a dataset, an image, weights or a constant.

    main.py prints the message, one sentence saying what is wrong and how to fix
    it, and exits with status 1; no traceback. Raise it with a message a user can
    act on, naming the offending path or value.
    """


def reason(error: Exception) -> str:
    """The cause of `error` in a few words, to put in parentheses in an InputError: the system's words
    for an OSError, else the first sentence of its message without the source location that torch's
    and gloo's C++ code put first ("[enforce fail at inline_container.cc:672] . unexpected pos ...")."""
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    text = re.sub(r"^\[[^\]]*\][\s.]*", "", str(error).strip())
    return text.split(". ")[0].splitlines()[0] if text else type(error).__name__
