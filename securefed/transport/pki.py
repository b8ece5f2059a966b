"""Test and pilot certificates for a Flower deployment, made with ``cryptography``.

Writes into ``OUT``:

* ``ca.crt`` / ``ca.key``: a self-signed CA (keep ``ca.key`` offline);
* ``superlink.crt`` / ``superlink.key``: the SuperLink's TLS certificate for
  the given host names and IP addresses, signed by the CA;
* ``NAME.node`` / ``NAME.node.pub``: one SuperNode authentication key pair
  per site (ECDSA P-384, OpenSSH format, as ``flower-supernode
  --auth-supernode-private-key`` and ``flwr supernode register`` expect).

    python -m securefed.transport.pki OUT --host 127.0.0.1 --host localhost --node A --node B

A consortium in production uses its own CA; these files are for pilots and tests.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
from collections.abc import Iterable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from protocols.secret_files import create_secret_file

__all__ = ["write_ca_and_server", "write_node_key"]


def _write_private(path: Path, data: bytes) -> None:
    """A new 0600 file (created so, never chmodded); FileExistsError if ``path`` exists."""
    create_secret_file(path, data)


def _san(hosts: Iterable[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def write_ca_and_server(out: Path, hosts: Iterable[str], days: int = 365) -> dict[str, Path]:
    """Write the CA and the SuperLink certificate; returns the paths by role."""
    out.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "securefed consortium CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - dt.timedelta(minutes=5))
          .not_valid_after(now + dt.timedelta(days=days))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False,
                                       encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    hosts = list(hosts)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(_san(hosts), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    paths = {"ca": out / "ca.crt", "ca_key": out / "ca.key",
             "cert": out / "superlink.crt", "key": out / "superlink.key"}
    paths["ca"].write_bytes(ca.public_bytes(pem))
    paths["cert"].write_bytes(cert.public_bytes(pem))
    pkcs8 = serialization.PrivateFormat.PKCS8
    none = serialization.NoEncryption()
    _write_private(paths["ca_key"], ca_key.private_bytes(pem, pkcs8, none))
    _write_private(paths["key"], key.private_bytes(pem, pkcs8, none))
    return paths


def write_node_key(out: Path, name: str) -> tuple[Path, Path]:
    """Write ``NAME.node`` (private, 0600) and ``NAME.node.pub``; returns both paths."""
    out.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP384R1())
    private, public = out / f"{name}.node", out / f"{name}.node.pub"
    _write_private(private, key.private_bytes(serialization.Encoding.PEM,
                                              serialization.PrivateFormat.OpenSSH,
                                              serialization.NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                     serialization.PublicFormat.OpenSSH) + b"\n")
    return private, public


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m securefed.transport.pki",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--host", action="append", default=[],
                        help="SuperLink host name or IP address (repeat)")
    parser.add_argument("--node", action="append", default=[], help="site name (repeat)")
    parser.add_argument("--days", type=int, default=365)
    args = parser.parse_args(argv)
    if args.host:
        for role, path in write_ca_and_server(args.out, args.host, args.days).items():
            print(f"{role:8} {path}")
    for name in args.node:
        for path in write_node_key(args.out, name):
            print(f"node     {path}")


if __name__ == "__main__":
    main()
