"""Hook handlers that tests name by dotted path in KUMOSUBMIT["HOOKS"]."""

CALLS: list[tuple[str, str]] = []


def allow_carol(authz, authc, password, conn_meta):
    CALLS.append((authz, authc))
    return authc == "carol" and password == "carols password"
