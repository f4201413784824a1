"""One-line errors for bad user input.

Researchers run our scripts from shells and batch jobs; a traceback from deep inside torch tells them
nothing. Code that detects bad input raises `UserError` with a sentence that says what is wrong and how
to fix it; `run_main` turns it into `error: ...` on stderr and exit status 2.
"""
from __future__ import annotations

import sys
from typing import Callable

EXIT_USER_ERROR = 2


class UserError(Exception):
    """Bad input the user can fix: a missing file, an empty prompt, a mismatched checkpoint."""


def run_main(main: Callable[[], object]) -> None:
    """Run an entry point; print `UserError`s as one line and exit 2, and Ctrl-C as one line too."""
    try:
        main()
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
