"""The host names a PEM certificate file answers for under SNI, read as HAProxy reads
them (OpenSSL's first certificate block of the file, its subjectAltName DNS names and
its common names). Pure: a minimal DER reader for the two fields, so that no X.509
library is needed for them; anything it cannot read is reported as unreadable, and the
caller fails closed."""

from __future__ import annotations

import base64
import re

# The labels OpenSSL's PEM_read_bio_X509_AUX (what HAProxy loads a crt with) takes as a
# certificate: the first such block of the file is the one HAProxy presents.
_PEM_CERT = re.compile(rb"-----BEGIN ((?:TRUSTED |X509 )?CERTIFICATE)-----"
                       rb"([A-Za-z0-9+/=\s]+?)-----END \1-----")
_SAN = b"\x55\x1d\x11"  # 2.5.29.17, subjectAltName
_CN = b"\x55\x04\x03"  # 2.5.4.3, commonName
_NAME = re.compile(r"^(?:\*\.)?[a-z0-9_-]+(?:\.[a-z0-9_-]+)*$")
# ASN.1 string tags whose bytes are not one character each (OpenSSL's
# ASN1_STRING_to_UTF8 decodes them; every other string type is one byte a character).
_WIDE = {0x0C: "utf-8", 0x1E: "utf-16-be", 0x1C: "utf-32-be"}  # UTF8, BMP, Universal
_ASCII_UPPER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def cert_names(pem: bytes) -> tuple[str, ...] | None:
    """The names HAProxy gives a PEM file's first certificate for SNI, as it reads
    them: its subjectAltName DNS names and its common names, lowercased, each cut at a
    NUL as HAProxy cuts it; names no host name can be (a CN with spaces) are left out.
    None when that certificate cannot be read here: the caller must then assume it
    may name anything (fail closed)."""
    found = _PEM_CERT.search(pem)
    if found is None:
        return None
    try:
        der = base64.b64decode(b"".join(found.group(2).split()), validate=True)
        names = _der_names(der)  # a TRUSTED block's trailing trust settings are ignored
    except (ValueError, IndexError):
        return None
    out = dict.fromkeys(n.translate(_ASCII_UPPER) for n in names)
    return tuple(n for n in out if _NAME.match(n))


def _as_haproxy_reads(tag: int, raw: bytes) -> str:
    """A name's string as HAProxy indexes it: decoded by its ASN.1 type to UTF-8, then
    used as a C string, so cut at the first NUL (``good.example.com\\0.evil.test`` is
    ``good.example.com``) and lowercased in ASCII only. Undecodable: ValueError."""
    text = raw.decode(_WIDE.get(tag, "latin-1"))
    return text.split("\0", 1)[0]


def _tlv(der: bytes, i: int) -> tuple[int, int, int]:
    """DER at ``i``: (tag, start of its contents, end of its contents)."""
    tag, length = der[i], der[i + 1]
    i += 2
    if length & 0x80:
        count = length & 0x7F
        if not 0 < count <= 4:
            raise ValueError("DER length")
        length, i = int.from_bytes(der[i:i + count], "big"), i + count
    if i + length > len(der):
        raise ValueError("DER past the end")
    return tag, i, i + length


def _children(der: bytes, start: int, end: int) -> list[tuple[int, int, int]]:
    out = []
    while start < end:
        out.append(_tlv(der, start))
        start = out[-1][2]
    return out


def _der_names(der: bytes) -> list[str]:
    """An X.509 certificate's subjectAltName DNS names and subject common names."""
    _, start, end = _tlv(der, 0)  # Certificate
    _, start, end = _tlv(der, start)  # TBSCertificate
    fields = _children(der, start, end)
    if fields and fields[0][0] == 0xA0:  # [0] version
        fields = fields[1:]
    names = []
    _, s, e = fields[4]  # serial, signature, issuer, validity, subject
    for _, rs, re_ in _children(der, s, e):  # RDN sets
        for _, ats, ate in _children(der, rs, re_):  # AttributeTypeAndValue
            (_, os_, oe), (tag, vs, ve) = _children(der, ats, ate)[:2]
            if der[os_:oe] == _CN:
                names.append(_as_haproxy_reads(tag, der[vs:ve]))
    for tag, s, e in fields[6:]:
        if tag != 0xA3:  # [3] extensions
            continue
        (_, xs, xe), = _children(der, s, e)[:1]
        for _, es, ee in _children(der, xs, xe):
            parts = _children(der, es, ee)
            if der[parts[0][1]:parts[0][2]] != _SAN:
                continue
            _, vs, ve = parts[-1]  # the extension's OCTET STRING
            _, gs, ge = _tlv(der, vs)
            names += [_as_haproxy_reads(0x16, der[ns:ne])  # an IA5String
                      for tag, ns, ne in _children(der, gs, ge) if tag == 0x82]  # dNSName
    return names
