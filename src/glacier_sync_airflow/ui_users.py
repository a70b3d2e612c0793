"""Users and roles of the Airflow UI under the FAB auth manager (production sign-in).

    python -m glacier_sync_airflow.ui_users list
    python -m glacier_sync_airflow.ui_users add NAME --role ROLE [--email ADDRESS]
    python -m glacier_sync_airflow.ui_users set-role NAME ROLE
    python -m glacier_sync_airflow.ui_users set-password NAME
    python -m glacier_sync_airflow.ui_users remove NAME
    python -m glacier_sync_airflow.ui_users ensure-admin NAME

``add``, ``set-password`` and ``ensure-admin`` read the password from stdin.
``deploy.sh user`` runs these inside the stack's API server container; ``airflow-init`` runs
``ensure-admin`` with the admin password secret. Passwords are read from stdin only: never from
argv (visible in the process list) and never printed. Errors are one line, exit 2.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

ROLES_HINT = "Admin, Op, User, Viewer (or a custom role made in the UI)"
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")


class UserError(Exception):
    """A one-line error for the operator."""


@contextmanager
def security_manager() -> Iterator[Any]:
    """FAB's security manager inside a Flask app context (what ``airflow users`` uses)."""
    from airflow.configuration import conf

    manager = conf.get("core", "auth_manager")
    if "FabAuthManager" not in manager:
        raise UserError(
            f"this stack signs in with {manager.rsplit('.', 1)[-1]}, which has no users or roles "
            "to manage: deploy it with --auth fab"
        )
    from airflow.providers.fab.auth_manager.cli_commands.utils import get_application_builder

    with get_application_builder() as appbuilder:
        yield appbuilder.sm


def read_password(stream=None) -> str:
    """The first line of stdin (a terminal prompts without echo)."""
    stream = stream or sys.stdin
    if stream.isatty():
        import getpass

        first, second = getpass.getpass("Password: "), getpass.getpass("Again: ")
        if first != second:
            raise UserError("the two passwords differ; nothing changed")
        password = first
    else:
        password = stream.readline().rstrip("\r\n")
    if len(password) < 8:
        raise UserError("give a password of at least 8 characters on stdin; nothing changed")
    return password


def check_name(name: str) -> str:
    if not NAME.match(name):
        raise UserError(
            f"user name {name!r}: use letters, digits and . _ @ - (at most 64, not starting "
            "with a sign)"
        )
    return name


def _role(sm, name: str):
    role = sm.find_role(name)
    if role is None:
        known = ", ".join(sorted(r.name for r in sm.get_all_roles()))
        raise UserError(f"no role {name!r}; the roles are {known}")
    return role


def _user(sm, name: str):
    user = sm.find_user(username=name)
    if user is None:
        raise UserError(f"no user {name!r} (`deploy.sh user --dest DIR list` shows them)")
    return user


def list_users(sm) -> list[dict[str, Any]]:
    """Every user with its roles and whether it may sign in."""
    return [
        {
            "username": u.username,
            "roles": sorted(r.name for r in u.roles),
            "active": bool(u.active),
            "last_login": u.last_login.isoformat(timespec="seconds") if u.last_login else None,
        }
        for u in sorted(sm.get_all_users(), key=lambda u: u.username)
    ]


def add_user(sm, name: str, role: str, password: str, email: str | None = None) -> str:
    if sm.find_user(username=name) is not None:
        raise UserError(f"user {name!r} exists; use set-role or set-password")
    email = email or f"{name}@localhost"
    if sm.find_user(email=email) is not None:
        raise UserError(f"another user has the email {email}; give --email")
    if not sm.add_user(name, name, "-", email, _role(sm, role), password):
        raise UserError(f"Airflow refused to create user {name!r} (see its log above)")
    return f"user {name} added with role {role}"


def set_role(sm, name: str, role: str) -> str:
    user, wanted = _user(sm, name), _role(sm, role)
    if name == _last_admin(sm) and wanted.name != "Admin":
        raise UserError(f"{name} is the last Admin; give another user Admin first")
    user.roles = [wanted]
    sm.update_user(user)
    return f"user {name} now has role {role} (from its next sign-in)"


def set_password(sm, name: str, password: str) -> str:
    user = _user(sm, name)
    if not sm.reset_password(user.id, password):
        raise UserError(f"Airflow refused the new password of {name!r}")
    return f"password of {name} changed"


def remove_user(sm, name: str) -> str:
    user = _user(sm, name)
    if name == _last_admin(sm):
        raise UserError(f"{name} is the last Admin; give another user Admin first")
    if not sm.del_register_user(user):
        raise UserError(f"Airflow refused to remove {name!r}")
    return f"user {name} removed"


def ensure_admin(sm, name: str, password: str) -> str:
    """The deployment's admin exists with role Admin (created once; its password kept after)."""
    user = sm.find_user(username=name)
    if user is None:
        add_user(sm, name, "Admin", password, email=f"{name}@localhost")
        return f"admin user {name} created"
    if "Admin" not in {r.name for r in user.roles}:
        user.roles = [*user.roles, _role(sm, "Admin")]
        sm.update_user(user)
        return f"admin user {name} given the Admin role back"
    return f"admin user {name} present"


def _last_admin(sm) -> str | None:
    admins = [u.username for u in sm.get_all_users() if "Admin" in {r.name for r in u.roles}]
    return admins[0] if len(admins) == 1 else None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deploy.sh user",
        description="Users of the Airflow UI (FAB auth manager). Passwords come on stdin.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="every user, its roles, and whether it is active")
    p = sub.add_parser("add", help="a new user with one role; its password on stdin")
    p.add_argument("name")
    p.add_argument("--role", required=True, help=ROLES_HINT)
    p.add_argument("--email")
    p = sub.add_parser("set-role", help="replace a user's roles with ROLE")
    p.add_argument("name")
    p.add_argument("role", help=ROLES_HINT)
    p = sub.add_parser("set-password", help="a user's new password, on stdin")
    p.add_argument("name")
    p = sub.add_parser("remove", help="remove a user (never the last Admin)")
    p.add_argument("name")
    p = sub.add_parser("ensure-admin", help="create the admin once (password on stdin)")
    p.add_argument("name")
    return parser


def run(args: argparse.Namespace) -> str:
    name = check_name(args.name) if getattr(args, "name", None) is not None else None
    password = read_password() if args.command in ("add", "set-password", "ensure-admin") else ""
    with security_manager() as sm:
        if args.command == "list":
            return json.dumps(list_users(sm), indent=2)
        if args.command == "add":
            return add_user(sm, name, args.role, password, args.email)
        if args.command == "set-role":
            return set_role(sm, name, args.role)
        if args.command == "set-password":
            return set_password(sm, name, password)
        if args.command == "remove":
            return remove_user(sm, name)
        return ensure_admin(sm, name, password)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        print(run(args))
    except UserError as exc:
        print(f"ui users: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
