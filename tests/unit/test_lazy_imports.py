"""A plan of certificates that need nothing imports neither the ACME client nor cryptography (together
0.15 s of start-up), nor structlog (0.1 s): they are imported when a certificate or key is read, an ACME
issuance runs or an event is logged."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]

PLAN = """
import json, sys
from reconciler.entry import cli
code = cli.main(["plan", "-d", sys.argv[1]])
mods = ("cryptography", "acme", "josepy", "reconciler.support.pki", "structlog", "rich.pretty")
print(json.dumps({"code": code, "imported": [m for m in mods if m in sys.modules]}))
"""


def _plan(desired: Path) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, "-c", PLAN, str(desired)], capture_output=True, text=True, cwd=ROOT, check=True
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_a_plan_with_nothing_to_read_imports_no_x509_or_acme_code(tmp_path: Path) -> None:
    desired = tmp_path / "desired"
    desired.mkdir()
    (desired / "all.yaml").write_text(
        "apiVersion: certctl/v1\nkind: Issuer\nmetadata: {name: local}\nspec: {localCA: {}}\n---\n"
        "apiVersion: certctl/v1\nkind: Store\nmetadata: {name: pem}\nspec: {pemDirectory: {path: ../pem}}\n---\n"
        "apiVersion: certctl/v1\nkind: Certificate\nmetadata: {name: www}\n"
        "spec: {issuer: local, domains: [www.example.com], stores: [pem]}\n"
    )
    assert _plan(desired) == {"code": 0, "imported": []}


def test_the_x509_code_is_imported_when_a_store_holds_a_file_to_read(tmp_path: Path) -> None:
    from reconciler.adapters.stores import pemdir  # the lazy name still works as the module

    desired = tmp_path / "desired"
    desired.mkdir()
    (desired / "all.yaml").write_text(
        "apiVersion: certctl/v1\nkind: Store\nmetadata: {name: pem}\nspec: {pemDirectory: {path: ../pem}}\n"
    )
    (tmp_path / "pem").mkdir()
    (tmp_path / "pem" / "other.pem").write_text("-----BEGIN CERTIFICATE-----\nnot base64\n")
    found = _plan(desired)
    assert found["code"] == 0 and "reconciler.support.pki" in found["imported"]
    assert callable(vars(pemdir)["pki"].info_from_pem)


APPLY = """
import json, sys
from reconciler.entry import cli
code = cli.main(["apply", "-d", sys.argv[1]])
print(json.dumps({"code": code, "imported": [m for m in ("acme", "josepy") if m in sys.modules]}))
"""


def test_an_apply_that_orders_nothing_from_an_acme_ca_imports_no_acme_client(tmp_path: Path) -> None:
    """The ACME Issuer's account is registered with the email its spec names: checking that reads the
    account record only (the client, 0.15 s to import, is loaded when an order or a contact update needs
    it). Before, every apply imported it to look at the record."""
    desired = tmp_path / "desired"
    desired.mkdir()
    directory = "https://127.0.0.1:9/dir"  # nothing listens there: nothing may need to ask
    (desired / "all.yaml").write_text(
        "apiVersion: certctl/v1\nkind: Settings\nmetadata: {name: s}\nspec: {stateDir: ../state}\n---\n"
        "apiVersion: certctl/v1\nkind: Issuer\nmetadata: {name: local}\nspec: {localCA: {}}\n---\n"
        "apiVersion: certctl/v1\nkind: Issuer\nmetadata: {name: le}\n"
        f"spec: {{acme: {{directoryUrl: '{directory}', email: ops@example.com, agreeToS: true, "
        "solvers: [{http01: {standalone: {port: 80}}}]}}\n---\n"
        "apiVersion: certctl/v1\nkind: Store\nmetadata: {name: pem}\nspec: {pemDirectory: {path: ../pem}}\n---\n"
        "apiVersion: certctl/v1\nkind: Certificate\nmetadata: {name: www}\n"
        "spec: {issuer: local, domains: [www.example.com], stores: [pem]}\n"
    )
    account = tmp_path / "state" / "acme" / "le"
    account.mkdir(parents=True)
    (account / "account.json").write_text(
        json.dumps(
            {"directoryUrl": directory, "uri": "https://127.0.0.1:9/acct/1", "email": "ops@example.com"}
        )
    )
    result = subprocess.run(
        [sys.executable, "-c", APPLY, str(desired)], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {"code": 0, "imported": []}
    assert (tmp_path / "pem" / "www" / "cert.pem").is_file()  # the apply did its work
