"""Shared helpers for tests over Marathon payload fixtures (tests/fixtures only)."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
APP_FIXTURES = sorted(p.name for p in FIXTURES.glob("apps_*.json"))

# Agent names the fake resolver knows; anything else is unresolvable.
HOSTS = {"agent-7.internal": "10.0.9.7"}


def load(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


def resolve(host: str) -> str | None:
    """A pure stand-in for CachingResolver: IP literals pass, known names map."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return HOSTS.get(host)


# A certificate (for unloadable.test, as certnames.py reads it: a TBSCertificate alone,
# without its signature, which OpenSSL cannot load) and a key's markers: a file HAProxy
# cannot load, so admission refuses it (it has the look of a certificate file).
UNLOADABLE_PEM = ("-----BEGIN CERTIFICATE-----\n"
                  "MIIBTzCCAUugAwIBAgIUEHyp0j7kSUIZZFRTco32RueI1QAwCgYIKoZIzj0EAwIw\n"
                  "GjEYMBYGA1UEAwwPdW5sb2FkYWJsZS50ZXN0MB4XDTI2MTIwMjA4MzIzMVoXDTI2\n"
                  "MTIwMzA4MzIzMVowGjEYMBYGA1UEAwwPdW5sb2FkYWJsZS50ZXN0MFkwEwYHKoZI\n"
                  "zj0CAQYIKoZIzj0DAQcDQgAEB/fr/3K3HNzN9wOBlWQis7lAri2z5W0mEPGfYHm6\n"
                  "GpP1MrkCZ8cgkTz/zIMbKcbgG2YUQFTJelIiD/ZWbNsZ+qNvMG0wHQYDVR0OBBYE\n"
                  "FPylMvwbYtwYlcGaf7QIVtEt6wTIMB8GA1UdIwQYMBaAFPylMvwbYtwYlcGaf7QI\n"
                  "VtEt6wTIMA8GA1UdEwEB/wQFMAMBAf8wGgYDVR0RBBMwEYIPdW5sb2FkYWJsZS50\n"
                  "ZXN0\n-----END CERTIFICATE-----\n"
                  "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n")


# A self-signed EC certificate for loadable.test (valid until 2126) and its key: a file
# admission takes and HAProxy loads. A test key, of no use anywhere else.
LOADABLE_PEM = (
    "-----BEGIN CERTIFICATE-----\n"
    "MIIBoDCCAUegAwIBAgIUPfWQSAokJkE1Uke5yeuZ35s2+mMwCgYIKoZIzj0EAwIw\n"
    "GDEWMBQGA1UEAwwNbG9hZGFibGUudGVzdDAgFw0yNjEyMDIxNzE1MDlaGA8yMTI2\n"
    "MTEwODE3MTUwOVowGDEWMBQGA1UEAwwNbG9hZGFibGUudGVzdDBZMBMGByqGSM49\n"
    "AgEGCCqGSM49AwEHA0IABE3YpKt6yeZcPayTjtXEn6HGduFtBtF8ZHapFtd9qUc4\n"
    "ML7esq4X/jQxqVI0smEH0Uf6H9lwdPnVU80G6OJKR4ujbTBrMB0GA1UdDgQWBBQ/\n"
    "g4OMLQiIOw+YKBf+UqwrLKZ66zAfBgNVHSMEGDAWgBQ/g4OMLQiIOw+YKBf+Uqwr\n"
    "LKZ66zAPBgNVHRMBAf8EBTADAQH/MBgGA1UdEQQRMA+CDWxvYWRhYmxlLnRlc3Qw\n"
    "CgYIKoZIzj0EAwIDRwAwRAIgaaOIXO4+bL6eMvWHtQlj3TqocuiBSZGUUZTXSoLr\n"
    "q/ACIEy60Br+jAfqg1b6MExablG+EIGA4A3fXvOoC5RzNvKp\n"
    "-----END CERTIFICATE-----\n"
    "-----BEGIN PRIVATE KEY-----\n"
    "MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgoIgwHDWBmCfMJ8iW\n"
    "byJB4qVV88e74jFZtx64/KX4zcehRANCAARN2KSresnmXD2sk47VxJ+hxnbhbQbR\n"
    "fGR2qRbXfalHODC+3rKuF/40MalSNLJhB9FH+h/ZcHT51VPNBujiSkeL\n"
    "-----END PRIVATE KEY-----\n")
