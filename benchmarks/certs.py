"""Certificate admission: what a full sync costs when apps name certificate files that
only ``haproxy -c`` can judge (OpenSSL's own loader is unsure of them: here a file with a
block OpenSSL cannot decode after the certificate and key, which HAProxy 2.6 loads; the
same path as a file with an ``.ocsp`` beside it, before those stopped needing HAProxy).

Per N files: ``hostfacts.gather`` of N apps naming one file each, the first time (every
file new: one ``haproxy -c`` for all of them, in batches of up to 1,000), and again with
nothing changed (the cached verdicts, a stat per file). For comparison, the files judged
one ``haproxy -c`` each, as before the batching (up to 100 files; beyond, N times the
per-file cost).
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

from servicerouter import hostfacts
from servicerouter.layout import Settings
from servicerouter.model import App, Options, Service

from .common import Context, Table

# OpenSSL's loader refuses it (a block it cannot decode), HAProxy 2.6 takes it.
JUNK = "-----BEGIN FOO-----\n!!!!\n-----END FOO-----\n"


def _pem(root: Path) -> str:
    """A self-signed certificate and its key (EC P-256: quick to make), as one PEM."""
    key, crt = root / "key.pem", root / "crt.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-keyout", str(key), "-out",
                    str(crt), "-subj", "/CN=bench.example.com", "-days", "30"],
                   check=True, capture_output=True)
    return crt.read_text() + key.read_text()


def _files(folder: Path, n: int, text: str) -> list[Path]:
    folder.mkdir(parents=True)
    out = []
    for i in range(n):
        f = folder / f"c{i}.pem"
        f.write_text(text)
        out.append(f)
    return out


def _gather_ms(files: list[Path]) -> float:
    apps = [App(f"/bench/a{i}", services=(Service(f"/bench/a{i}", 0, 10000 + i,
                                                  Options(ssl_cert=str(f))),))
            for i, f in enumerate(files)]
    settings = Settings(http_port=0, https_port=0, ssl_cert_dirs=(str(files[0].parent),))
    t0 = time.perf_counter()
    facts = hostfacts.gather(apps, settings)
    ms = (time.perf_counter() - t0) * 1000
    refused = [f.problem for f in facts.certs.values() if f.problem]
    if refused:
        raise RuntimeError(f"a file HAProxy takes was refused: {refused[0]}")
    return ms


def run(ctx: Context) -> list[Table]:
    root = ctx.dir("certs")
    text = _pem(root) + JUNK
    sizes = (1, 10) if ctx.quick else (1, 10, 100, 1000)
    table = Table("certs", "Certificate files only haproxy -c can judge: one gather of N apps",
                  ["files", "first gather ms (one haproxy -c)", "unchanged gather ms",
                   "one haproxy -c per file, ms", "per file, one each, ms"])
    for n in sizes:
        files = _files(root / f"batched-{n}", n, text)
        row: dict[str, Any] = {"files": n, "first gather ms (one haproxy -c)":
                               _gather_ms(files), "unchanged gather ms": _gather_ms(files)}
        alone = _files(root / f"alone-{n}", min(n, 10 if ctx.quick else 100), text)
        t0 = time.perf_counter()
        for f in alone:
            _gather_ms([f])
        each = (time.perf_counter() - t0) * 1000 / len(alone)
        row["per file, one each, ms"] = each
        row["one haproxy -c per file, ms"] = each * n
        table.rows.append(row)
    table.notes.append("'one haproxy -c per file' is measured up to 100 files, and N times "
                       "the per-file cost beyond.")
    return [table]
