"""Text from certificates and cards made safe to show on a terminal or write to a log.

Subjects, token labels and comments come from certificates, cards and clients: any of
them may hold a newline (a second ``ssh-add -L`` key line, a forged log line), ESC (a
terminal escape sequence: clear the screen, set the window title) or other control and
format characters. :func:`printable` is the one filter for all such text: the agent's
identity comments and log lines, the sshd helper's comments and log lines, and the CLI's
tables. Machine-readable output (``--json``) keeps exact values and does not use it.

Standard library only, and no imports at all: the sshd helper's login path imports it.
"""

REPLACEMENT = "?"


def printable(text: object) -> str:
    """``str(text)`` with every character that is not printable replaced by ``?``.

    "Printable" is :meth:`str.isprintable`: control characters (newline, tab, ESC, DEL,
    C1), format characters (bidirectional overrides, zero-width joiners), line and
    paragraph separators and unassigned code points are replaced; letters, digits,
    punctuation and the ASCII space are kept, in any script. The result is one line.
    """
    value = text if isinstance(text, str) else str(text)
    if value.isprintable():  # the usual case, decided in C
        return value
    return "".join(c if c.isprintable() else REPLACEMENT for c in value)
