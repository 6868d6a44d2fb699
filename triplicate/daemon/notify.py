"""Notifications to people through apprise: the one small contract every feature uses.

``notify(settings, title, body, kind)`` sends to every URL of ``[notify] urls`` and
never raises: a notification that cannot be delivered is a warning in the log,
never a failed backup. apprise is imported only when there is somewhere to send.
``kind`` is apprise's notification type ("failure", "warning", "success" or
"info"), which services turn into priorities and colours (ntfy, chats, e-mail).
"""

from __future__ import annotations

import logging
from typing import Literal

from triplicate.config.model import NotifySettings

log = logging.getLogger("triplicate.notify")

Kind = Literal["failure", "warning", "success", "info"]


def notify(settings: NotifySettings, title: str, body: str, kind: Kind = "info") -> bool:
    """Send ``title``/``body`` as apprise type ``kind`` to every configured URL; return True
    when all accepted it.

    Returns False (and logs one line) when nothing is configured or a service
    refused; never raises. Blocking (network): the daemon calls it in a thread.
    """
    if not settings.urls:
        return False
    try:
        import apprise

        # apprise logs the services it talks to; their URLs may hold tokens.
        logging.getLogger("apprise").setLevel(logging.CRITICAL)
        sender = apprise.Apprise()
        accepted = sum(1 for url in settings.urls if sender.add(url))
        if accepted < len(settings.urls):
            log.warning("notify: %d of %d URL(s) not understood by apprise (check [notify] urls)",
                        len(settings.urls) - accepted, len(settings.urls))
        delivered = bool(accepted) and bool(sender.notify(title=title, body=body, notify_type=kind))
    except Exception as error:  # a notification must never take the caller down
        log.warning("notify: could not send %r: %s", title, type(error).__name__)
        return False
    if delivered:
        log.info("notify: sent %r", title)
    else:
        log.warning("notify: could not deliver %r to every service", title)
    return delivered
