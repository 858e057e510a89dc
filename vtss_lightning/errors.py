"""Errors a user can fix: one line, naming the problem and the remedy."""


class VTSSError(ValueError):
    """A problem with the user's data, configuration or generator.

    Subclasses ``ValueError`` so existing ``except ValueError`` code keeps working;
    the ``vtss`` CLI prints these as a single line without a traceback.
    """
