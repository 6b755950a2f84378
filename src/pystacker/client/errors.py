"""The errors the client raises: one type with the server's status and message, and two for sessions."""

from __future__ import annotations


class PyStackerError(Exception):
    """A request the server refused or could not be reached for.

    `status` is the HTTP status (or the `code` of a WebSocket `error` frame); 0 means the server was not
    reached or did not answer in time. `msg` is the server's `msg` text, or what went wrong locally.
    """

    def __init__(self, status: int, msg: str) -> None:
        super().__init__(f"{status}: {msg}" if status else msg)
        self.status = status
        self.msg = msg


class GatewayUnreachable(PyStackerError):
    """The gateway the registry named did not take the connection (refused, reset, timed out)."""

    def __init__(self, gateway_id: str, msg: str) -> None:
        super().__init__(0, msg)
        self.gateway_id = gateway_id


class SessionClosed(PyStackerError):
    """The session was closed by its owner; nothing more will arrive."""

    def __init__(self, msg: str = "session closed") -> None:
        super().__init__(0, msg)


class SessionFailed(PyStackerError):
    """The session gave up: reconnecting failed too often, the token was refused, or another
    connection of the same user replaced this one (close code 4009)."""
