"""Shared HTTP parts of every service: envelope, errors, auth, request parsing, running servers."""
