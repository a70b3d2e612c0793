"""The AWS credentials secret file: INI with one section per profile (stdlib only).

Read by the pipeline when it opens a profile's session (``glacier_sync.aws``) and by deploy.sh
before it installs the file (``deploytools``): the same checks, the same messages.
No message quotes a line of the file (it may hold a secret).
"""

from __future__ import annotations

import configparser
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from glacier_sync.errors import ConfigError

REQUIRED_KEYS = ("aws_access_key_id", "aws_secret_access_key")


def _problem(exc: configparser.Error) -> str:
    """What is wrong with the INI text and where, without quoting the line."""
    if isinstance(exc, configparser.MissingSectionHeaderError):
        return f"line {exc.lineno} comes before any [profile] section header"
    if isinstance(exc, configparser.ParsingError):
        numbers = [str(number) for number, _ in exc.errors]
        if len(numbers) == 1:
            return f"line {numbers[0]} is not `key = value`"
        return f"lines {', '.join(numbers)} are not `key = value`"
    if isinstance(exc, configparser.DuplicateSectionError):
        return f"section [{exc.section}] appears twice (line {exc.lineno})"
    if isinstance(exc, configparser.DuplicateOptionError):
        return f"[{exc.section}] sets {exc.option} twice (line {exc.lineno})"
    return type(exc).__name__


def read_credentials(path: Path | str) -> configparser.ConfigParser:
    """The parsed file; ConfigError naming the file and the line when it is not valid INI."""
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read(path, encoding="utf-8")
    except configparser.Error as exc:
        raise ConfigError(
            f"AWS credentials file {path} is not valid INI: {_problem(exc)}"
        ) from None
    return parser


def profile_credentials(
    parser: configparser.ConfigParser,
    path: Path | str,
    profile: str | None,
    queue: str | None = None,
) -> configparser.SectionProxy:
    """The section of ``profile`` (``default`` when None), holding both keys.

    ``queue`` names the queue that asked for the profile, for the message.
    """
    section = profile or "default"
    if not parser.has_section(section):
        user = f"queue {queue!r} uses AWS profile [{section}] but " if queue else ""
        raise ConfigError(
            f"{user}AWS credentials file {path} has no [{section}] section; add it, or set the "
            f"queue's `profile` to one of: {', '.join(parser.sections()) or '(none)'}"
        )
    values = parser[section]
    missing = [key for key in REQUIRED_KEYS if not values.get(key)]
    if missing:
        raise ConfigError(f"AWS credentials file {path} [{section}] lacks {', '.join(missing)}")
    return values


def check_credentials_file(path: Path | str, queues: Iterable[Mapping[str, Any]] = ()) -> None:
    """The whole file before it is installed: valid INI, at least one section, every section
    complete, and a section for each queue that uses a profile (not an Airflow connection)."""
    parser = read_credentials(path)
    if not parser.sections():
        raise ConfigError(
            f"AWS credentials file {path} has no [profile] section; add one such as [default] "
            f"with {' and '.join(REQUIRED_KEYS)}"
        )
    for section in parser.sections():
        profile_credentials(parser, path, section)
    for queue in queues:
        if not queue.get("aws_conn_id"):
            profile_credentials(parser, path, queue.get("profile"), queue=queue.get("name"))
