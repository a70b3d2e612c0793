"""Small helpers of deploy.sh and local-airflow.sh, stdlib only (the host's python3, no venv).

    PYTHONPATH=src python3 -m deploytools SUBCOMMAND ...

    secret [NBYTES]                  a random URL-safe secret of NBYTES random bytes (default 32)
    fernet-key                       an Airflow fernet key (32 random bytes, URL-safe base64)
    instance-id                      a new instance id (the mark of its shared folders)
    check-toml FILE                  FILE is valid TOML
    check-aws-credentials FILE [CONFIG]
                                     FILE is valid INI, every section has both keys, and each
                                     queue of the pipeline's TOML CONFIG using a profile has one
    set-password FILE USER           USER's password, read from stdin, into the JSON FILE of a
                                     SimpleAuthManager (other users kept; mode 0600)
    get-password FILE USER           print USER's password from that JSON FILE
    port-free PORT                   exit 0 when nothing listens on 127.0.0.1:PORT, else 1
    wait-url URL SECONDS [--pid PID] exit 0 once URL answers; 1 after SECONDS, or as soon as
                                     process PID has ended

Checks print a one-line error on stderr and exit 1. The two questions (port-free, wait-url)
answer "no" with exit 1 and no output: the calling script says what to do. Bad arguments exit 2.
Passwords never pass through argv (visible to every user in the process list).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import secrets
import socket
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from glacier_sync.credentials import check_credentials_file
from glacier_sync.errors import ConfigError


def secret(nbytes: int = 32) -> str:
    """A random URL-safe text of ``nbytes`` random bytes."""
    return secrets.token_urlsafe(nbytes)


def instance_id() -> str:
    """A new instance id: ``gs-`` and 16 hex digits (``instance_id``'s pattern)."""
    return f"gs-{secrets.token_hex(8)}"


def fernet_key() -> str:
    """What ``cryptography.fernet.Fernet.generate_key()`` gives, without cryptography."""
    return base64.urlsafe_b64encode(os.urandom(32)).decode()


def load_toml(path: Path) -> dict[str, Any]:
    """The parsed TOML file; ConfigError naming the file and the error."""
    import tomllib

    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"{path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"{path} cannot be read: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None


def config_queues(config: dict[str, Any]) -> list[dict[str, Any]]:
    """Every queue entry of a pipeline config: ``[[queues]]`` and each profile's."""
    queues = list(config.get("queues") or [])
    for profile in (config.get("profiles") or {}).values():
        if isinstance(profile, dict):
            queues += profile.get("queues") or []
    return [queue for queue in queues if isinstance(queue, dict)]


def check_aws_credentials(path: Path, config: Path | None = None) -> None:
    """deploy.sh's check of ``--aws-credentials`` against ``--pipeline-config``'s queues."""
    if not path.is_file():
        raise ConfigError(f"AWS credentials file {path} does not exist")
    queues = config_queues(load_toml(config)) if config else []
    check_credentials_file(path, queues)


def _read_passwords(path: Path) -> dict[str, str]:
    if not path.exists() or path.stat().st_size == 0:
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} is not valid JSON ({exc}); fix it or remove it") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a JSON object of user: password; fix it or remove it")
    return data


def set_password(path: Path, user: str, password: str) -> None:
    """Write ``user``'s password into the JSON file (mode 0600, replaced whole)."""
    if not user:
        raise ConfigError("give a non-empty user name")
    if not password:
        raise ConfigError(f"give a non-empty password for {user} on stdin")
    data = _read_passwords(path)
    data[user] = password
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # mode 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def get_password(path: Path, user: str) -> str:
    """``user``'s password from the JSON file."""
    password = _read_passwords(path).get(user)
    if not password:
        raise ConfigError(f"{path} holds no password for {user}")
    return password


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    """True when a server could listen on ``host:port``.

    SO_REUSEADDR as servers use it: only a listening socket makes the port busy, not the
    TIME_WAIT connections a just-stopped server leaves behind.
    """
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
            sock.listen()
        except OSError:
            return False
    return True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def wait_url(url: str, seconds: float, pid: int | None = None, every: float = 1.0) -> bool:
    """True once ``url`` answers with a success status; False after ``seconds`` or as soon as
    process ``pid`` (the server meant to answer) has ended."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return True
        except OSError:
            pass
        if pid is not None and not _alive(pid):
            return False
        if time.monotonic() + every > deadline:
            return False
        time.sleep(every)


# -- command line ------------------------------------------------------------------------------


def _port(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (1-65535)")
    return int(text)


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) == 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return int(text)


def _url(text: str) -> str:
    if not text.startswith(("http://", "https://")):
        raise argparse.ArgumentTypeError(f"{text!r} is not an http(s) URL")
    return text


def _stdin_password() -> str:
    return sys.stdin.read().rstrip("\r\n")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deploytools",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="SUBCOMMAND")
    cmd = sub.add_parser("secret", help="a random URL-safe secret")
    cmd.add_argument("nbytes", nargs="?", type=_positive, default=32, metavar="NBYTES")
    sub.add_parser("fernet-key", help="an Airflow fernet key")
    sub.add_parser("instance-id", help="a new instance id")
    cmd = sub.add_parser("check-toml", help="FILE is valid TOML")
    cmd.add_argument("file", type=Path, metavar="FILE")
    cmd = sub.add_parser("check-aws-credentials", help="the credentials INI against CONFIG")
    cmd.add_argument("file", type=Path, metavar="FILE")
    cmd.add_argument("config", nargs="?", type=Path, metavar="CONFIG")
    cmd = sub.add_parser("set-password", help="USER's password from stdin into FILE")
    cmd.add_argument("file", type=Path, metavar="FILE")
    cmd.add_argument("user", metavar="USER")
    cmd = sub.add_parser("get-password", help="print USER's password from FILE")
    cmd.add_argument("file", type=Path, metavar="FILE")
    cmd.add_argument("user", metavar="USER")
    cmd = sub.add_parser("port-free", help="exit 0 when 127.0.0.1:PORT is free")
    cmd.add_argument("port", type=_port, metavar="PORT")
    cmd = sub.add_parser("wait-url", help="exit 0 once URL answers")
    cmd.add_argument("url", type=_url, metavar="URL")
    cmd.add_argument("seconds", type=_positive, metavar="SECONDS")
    cmd.add_argument("--pid", type=_positive, help="give up as soon as this process has ended")
    return parser


def _run(args: argparse.Namespace) -> int:
    commands: dict[str, Callable[[], Any]] = {
        "secret": lambda: print(secret(args.nbytes)),
        "fernet-key": lambda: print(fernet_key()),
        "instance-id": lambda: print(instance_id()),
        "check-toml": lambda: load_toml(args.file),
        "check-aws-credentials": lambda: check_aws_credentials(args.file, args.config),
        "set-password": lambda: set_password(args.file, args.user, _stdin_password()),
        "get-password": lambda: print(get_password(args.file, args.user)),
        "port-free": lambda: port_free(args.port),
        "wait-url": lambda: wait_url(args.url, args.seconds, args.pid),
    }
    answer = commands[args.command]()
    return 1 if answer is False else 0


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    args = _parser().parse_args(argv)
    try:
        return _run(args)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
