#!/usr/bin/env python3
"""Print a RabbitMQ password hash (rabbit_password_hashing_sha256) for a definitions file.

RabbitMQ 3.10's rabbitmqctl has no `hash_password`, so this computes the same
thing: base64(salt + sha256(salt + utf8(password))) with a random 4-byte salt.

    python3 ops/rabbitmq/hash_password.py            # prompts, nothing in shell history
    python3 ops/rabbitmq/hash_password.py --stdin    # reads the password from stdin

Put the output in the user's "password_hash" (hashing_algorithm
"rabbit_password_hashing_sha256") of a *private* copy of definitions.json;
never commit a real hash.
"""

import base64
import getpass
import hashlib
import os
import sys


def rabbitmq_sha256_hash(password: str, salt: bytes) -> str:
    digest = hashlib.sha256(salt + password.encode("utf-8")).digest()
    return base64.b64encode(salt + digest).decode("ascii")


def main() -> int:
    if "--stdin" in sys.argv[1:]:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass("password: ")
    if not password:
        print("error: empty password", file=sys.stderr)
        return 2
    print(rabbitmq_sha256_hash(password, os.urandom(4)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
