"""Hook handlers that tests name by dotted path in KUMOSUBMIT["HOOKS"]."""

CALLS: list[tuple[str, str]] = []


def allow_carol(authz, authc, password, conn_meta):
    CALLS.append((authz, authc))
    return authc == "carol" and password == "carols password"


ORDER: list[str] = []


def builtin_note_rcpt(recipient, conn_meta):
    ORDER.append("builtin")


def note_rcpt(recipient, conn_meta):
    ORDER.append("settings")
