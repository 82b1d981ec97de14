"""Options more than one `lambdaflow` command takes."""

from __future__ import annotations

import click

from lambdaflow.core.output import FORMATS

format_option = click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    default="json",
    show_default=True,
    help="JSON lines, or a table for people.",
)
