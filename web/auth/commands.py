"""The account commands of the command line: `python app.py create-user | set-password |
create-token | disable-user | enable-user`.

Contract:
- `cli(app, argv)` runs one of CLI_COMMANDS (app.py hands over argv when its first word is
  one) and returns the exit status: 0, or 1 with `error: <reason>` on stderr.
- Passwords are asked twice on the terminal, or read as one line from stdin with
  `--password-stdin`; never echoed or logged. `create-token` prints only the new token.
- `create-user NAME --admin` needs no setup code: whoever runs it already has the server.
"""
from __future__ import annotations

import argparse
import getpass
import sys

import sqlalchemy as sa

from web.auth.accounts import AuthError, create_user, set_disabled, set_password
from web.auth.tokens import MAX_TOKEN_DAYS, issue_token
from web.db import User, db

CLI_COMMANDS = ("create-user", "set-password", "create-token", "disable-user", "enable-user")


def cli(app, argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python app.py")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("create-user", help="create an account (asks for the password)")
    p.add_argument("username")
    p.add_argument("--admin", action="store_true", help="may add accounts on the account page")
    p.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    p = sub.add_parser("set-password", help="set an account's password (asks for it)")
    p.add_argument("username")
    p.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    p = sub.add_parser("create-token", help="print a new API token for an account")
    p.add_argument("username")
    p.add_argument("--name", default="command line", help="what the token is for")
    p.add_argument("--expires-in-days", type=int, default=None,
                   help=f"the token stops working after this many days (1-{MAX_TOKEN_DAYS})")
    for command, what in (("disable-user", ("disable an account (ends its sessions, refuses "
                                            "its tokens)")), ("enable-user", "enable it again")):
        sub.add_parser(command, help=what).add_argument("username")
    args = parser.parse_args(argv)

    def read_password() -> str:
        if args.password_stdin:
            return sys.stdin.readline().rstrip("\r\n")
        first = getpass.getpass("Password: ")
        if first != getpass.getpass("Again: "):
            raise AuthError("the two passwords differ")
        return first

    with app.app_context():
        try:
            if args.command == "create-user":
                user = create_user(args.username, read_password(), admin=args.admin)
                print(f"created account {user.username!r}")
                return 0
            user = db.session.scalar(sa.select(User).where(User.username == args.username))
            if user is None:
                raise AuthError(f"no account named {args.username!r}")
            if args.command == "set-password":
                set_password(user, read_password())
                print(f"password of {user.username!r} changed")
            elif args.command in ("disable-user", "enable-user"):
                set_disabled(user, args.command == "disable-user")
                print(f"account {user.username!r} {args.command.split('-')[0]}d")
            else:
                _, secret = issue_token(user, args.name, args.expires_in_days)
                print(secret)
            return 0
        except AuthError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
