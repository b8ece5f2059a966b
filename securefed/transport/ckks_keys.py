"""Generate the CKKS key pair on the key holder's machine.

::

    python -m securefed.transport.ckks_keys KEYDIR

writes ``KEYDIR/ckks-secret.ctx`` (parameters, public and secret key; mode
0600; it never leaves this machine: the key holder's SuperNode reads it via
``ckks-key``) and ``KEYDIR/ckks-public.ctx`` (public key only; for
inspection), and prints the public context's fingerprint, which the
consortium can compare out of band. Sites never read either file: they get
the public context from the key holder over Flower, signed with its
securefed identity (:mod:`securefed.transport.flower_ckks`).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from protocols.ckks import CkksKeyHolder

__all__ = ["SECRET_FILE", "PUBLIC_FILE", "generate", "main"]

SECRET_FILE = "ckks-secret.ctx"
PUBLIC_FILE = "ckks-public.ctx"


def generate(directory: str | os.PathLike[str]) -> tuple[Path, str]:
    """Write a fresh key pair into ``directory`` (made mode 0700 if new).

    Returns the secret file's path and the public context's fingerprint.
    Refuses to overwrite an existing secret file.
    """
    directory = Path(directory)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    holder = CkksKeyHolder.generate()
    secret = directory / SECRET_FILE
    holder.save(secret)
    public = directory / PUBLIC_FILE
    tmp = public.with_name(public.name + ".tmp")
    tmp.write_bytes(holder.public_context())
    os.replace(tmp, public)
    return secret, holder.fingerprint


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m securefed.transport.ckks_keys",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("directory", help="where to write ckks-secret.ctx and ckks-public.ctx")
    args = parser.parse_args(argv)
    try:
        secret, fingerprint = generate(args.directory)
    except Exception as exc:  # one line for the operator
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"secret context: {secret} (mode 0600; keep it on this machine)")
    print(f"public context fingerprint: {fingerprint}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
