"""Errors a user can fix: one line, naming the problem and the remedy."""


class VTSSError(ValueError):
    """A problem with the user's data, configuration or generator.

    Subclasses ``ValueError`` so existing ``except ValueError`` code keeps working;
    the ``vtss`` CLI prints these as a single line without a traceback.
    """

    #: The ``vtss`` CLI's exit status for this error.
    exit_code = 2


class VTSSFileError(VTSSError):
    """A file the run reads or writes failed: a folder where a file belongs, no
    permission, a full disk or the file-size limit, a corrupt or unsafe checkpoint.

    Raised by the ``vtss`` CLI (from the original error) with the path and the cause;
    printed as one line, exit status 1. The search's progress file is kept, so
    rerunning the same command once the cause is fixed resumes the search.
    """

    exit_code = 1


def error_line(err: BaseException) -> str:
    """An error in one line for a status or a note: a ``VTSSError``'s own message, any
    other error's type and first line."""
    lines = str(err).strip().splitlines()
    first = lines[0] if lines else ""
    if isinstance(err, VTSSError):
        return first or type(err).__name__
    return f"{type(err).__name__}: {first}" if first else type(err).__name__
