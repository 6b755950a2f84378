"""What the deployment tests share: where the files are, and the `pystacker` command each container
or pod runs, checked against the real CLI."""

from __future__ import annotations

from pathlib import Path

import click
from click.testing import CliRunner

from pystacker.cli import main

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
IMAGE_CONFIG_IN_IMAGE = "/etc/pystacker/pystacker.yaml"


def command_is_real(args: list[str]) -> str | None:
    """None when `pystacker <args>` names a real command with real options, else click's complaint.

    `--help` is appended: click parses every option first (an unknown one is an error) and then
    prints the help instead of running the service."""
    result = CliRunner().invoke(main, [*args, "--help"])
    if result.exit_code != 0:
        return result.output.strip().splitlines()[-1] if result.output.strip() else repr(result.exception)
    return None


def service_of(args: list[str]) -> str:
    """The service a container's command runs (`gateway`, ..., `db upgrade`)."""
    command: click.Command = main
    words = []
    for word in args:
        if not isinstance(command, click.Group) or word not in command.commands:
            break
        command = command.commands[word]
        words.append(word)
    return " ".join(words)
