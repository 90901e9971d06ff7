"""What the command lines of dsmlib share: one-line errors, exit codes, ``--debug``.

``python -m dsmlib.experiments`` and ``python -m dsmlib.playground`` turn every failure into one
line on stderr (``error: ...``) and a non-zero exit status: 2 for a bad argument or an unusable
input or output file (``ValueError``, ``TypeError``, ``ResultsError``, a missing file), 1 for a
failure while computing, 130 for Ctrl-C. With ``--debug`` the exception propagates with its
traceback instead.
"""

from __future__ import annotations

import argparse
import sys

from .io import ResultsError

__all__ = ["OneLineParser", "run_guarded", "one_line"]

USAGE_ERROR = 2
RUNTIME_ERROR = 1
INTERRUPTED = 130


class OneLineParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line: ``PROG: error: MESSAGE (see --help)``."""

    def error(self, message):
        self.exit(USAGE_ERROR, f"{self.prog}: error: {one_line(message)} (see --help)\n")


def one_line(exc) -> str:
    """An exception (or message) as one line of text."""
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def run_guarded(prog: str, body, debug: bool, *, interrupted: str = "interrupted") -> int:
    """Run ``body()`` (returns an exit status); expected failures become one line on stderr."""
    if debug:
        return body()
    try:
        return body()
    except KeyboardInterrupt:
        print(f"{prog}: {interrupted}", file=sys.stderr)
        return INTERRUPTED
    except (ResultsError, ValueError, TypeError, FileNotFoundError, IsADirectoryError,
            NotADirectoryError, PermissionError) as exc:
        print(f"{prog}: error: {one_line(exc)}", file=sys.stderr)
        return USAGE_ERROR
    except MemoryError:
        print(f"{prog}: error: out of memory (try fewer seeds, a smaller scale or more RAM)",
              file=sys.stderr)
        return RUNTIME_ERROR
    except (OSError, FloatingPointError, RuntimeError, NotImplementedError) as exc:
        print(f"{prog}: error: {one_line(exc)}", file=sys.stderr)
        return RUNTIME_ERROR
    except Exception as exc:                                  # a bug: still one line, with a hint
        print(f"{prog}: internal error: {type(exc).__name__}: {one_line(exc)} (run again with "
              f"--debug for the traceback, and please report it)", file=sys.stderr)
        return RUNTIME_ERROR
