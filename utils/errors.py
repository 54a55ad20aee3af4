"""The one exception type for bad user input."""


class InputError(Exception):
    """Bad input from the user: a dataset, an image, weights or a constant.

    main.py prints the message, one sentence saying what is wrong and how to fix
    it, and exits with status 1; no traceback. Raise it with a message a user can
    act on, naming the offending path or value.
    """
