"""The agent's logger, ``idm.agent``: every line it writes is one printable line.

Agent log lines carry text from certificates (subjects), cards (labels) and clients
(comments, provider paths, extension names). A newline in any of them would start a
forged line (``idm authorized-keys: ALLOW: ...``) and ESC a terminal escape, so the
logger itself passes every formatted message through :func:`idm.identity.display.printable`:
no call site has to remember to. Tracebacks of ``log.exception`` are formatted by the
handler and keep their lines.
"""

from __future__ import annotations

import logging

from idm.identity.display import printable


class PrintableMessages(logging.Filter):
    """Replace the record's message by its :func:`printable` form (arguments merged)."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Always keep the record; rewrite its message first."""
        message = record.getMessage()
        record.msg = printable(message)
        record.args = None
        return True


log = logging.getLogger("idm.agent")
if not any(isinstance(f, PrintableMessages) for f in log.filters):
    log.addFilter(PrintableMessages())
