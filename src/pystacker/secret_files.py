"""Config values read from files named by `*_FILE` environment variables, as containers hand secrets.

Docker and Kubernetes mount a secret as a file (`/run/secrets/jwt_secret`) rather than put it in the
environment, where `docker inspect`, `/proc/<pid>/environ` and crash reports can show it. Any
`PYSTACKER_<SECTION>__<KEY>` variable may therefore be given as `PYSTACKER_<SECTION>__<KEY>_FILE`, the
path of a file holding the value (the convention of the official MariaDB and PostgreSQL images). The
file's trailing newlines are dropped: `echo secret > file` and editors add one.

Setting both a variable and its `_FILE` twin is refused: which one wins would be a guess.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from pydantic_settings import EnvSettingsSource

FILE_SUFFIX = "_FILE"


class SecretFileError(Exception):
    """A `*_FILE` variable that cannot be used; the message names the variable, never the value."""


def values_from_files(environ: Mapping[str, str], prefix: str) -> dict[str, str]:
    """The variables (lower-cased names, without the suffix) that `*_FILE` variables stand for."""
    present = {name.upper() for name in environ}
    values: dict[str, str] = {}
    for name, path in environ.items():
        upper = name.upper()
        if not (upper.startswith(prefix.upper()) and upper.endswith(FILE_SUFFIX)):
            continue
        target = upper[: -len(FILE_SUFFIX)]
        if target == prefix.upper().rstrip("_") or target == prefix.upper():
            continue  # `PYSTACKER_FILE` and `PYSTACKER__FILE` name no key
        if target in present:
            raise SecretFileError(f"{target} and {upper} are both set: set only one of them")
        try:
            with open(path, encoding="utf-8") as file:
                values[target.lower()] = file.read().rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
            raise SecretFileError(f"{upper}: cannot read {path}: {reason}") from None
    return values


class EnvironmentWithSecretFiles(EnvSettingsSource):
    """The environment source, where a `*_FILE` variable stands for its twin with the file's value.

    It parses nested keys (`__`), JSON sections and types exactly as pydantic-settings' own
    environment source does, so a value means the same whether it comes from a variable or a file."""

    def _load_env_vars(self) -> Mapping[str, str | None]:
        prefix = self.env_prefix.upper()
        # The config is case-insensitive, so the parent hands over lower-cased names, as we do.
        variables = {name: value for name, value in super()._load_env_vars().items()
                     if not (name.upper().startswith(prefix) and name.upper().endswith(FILE_SUFFIX))}
        variables.update(values_from_files(os.environ, prefix))
        return variables
