"""Render users.acl from users.acl.in: `python deploy/redis/render_acl.py [--out users.acl]`.

Passwords come from ROLLOUTQ_{ADMIN,SIM,POLICY,CONTROLLER}_PASSWORD and are written as SHA-256
hashes (`#...`), so the rendered file holds no clear-text secret. Roles without a password are
rendered `off` (they cannot log in).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from pathlib import Path

ROLES = ("admin", "sim", "policy", "controller")
TEMPLATE = Path(__file__).with_name("users.acl.in")


def render(passwords: dict[str, str], template: str | None = None) -> str:
    text = template if template is not None else TEMPLATE.read_text()
    out = []
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue  # keep the rendered file to ACL lines only
        for role in ROLES:
            secret = passwords.get(role)
            if "{" + role + "}" in line:
                if secret:
                    line = line.replace("{" + role + "}", "#" + hashlib.sha256(secret.encode()).hexdigest())
                else:
                    line = line.replace(f"user {role} on {{{role}}}", f"user {role} off")
        out.append(line)
    return "\n".join(out) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, help="write here instead of stdout")
    args = ap.parse_args()
    text = render({r: os.environ.get(f"ROLLOUTQ_{r.upper()}_PASSWORD", "") for r in ROLES})
    if args.out:
        args.out.write_text(text)
        args.out.chmod(0o600)
    else:
        sys.stdout.write(text)


if __name__ == "__main__":
    main()
