"""For any set of specs, applying the plan and planning again gives no actions (the real local CA and stores)."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconciler.entry.cli import main
from reconciler.state.statedir import StateDir
from tests.conftest import BASE

label = st.text(alphabet="abcdefghijklmnopqrstuvwxyz", min_size=1, max_size=8)
cert = st.fixed_dictionaries(
    {
        "domains": st.lists(label, min_size=1, max_size=3, unique=True),
        "algorithm": st.sampled_from(["ecdsa-p256", "ecdsa-p384"]),
        "files": st.booleans(),
        "reuse": st.booleans(),
    }
)


def write(root: Path, certs: list[dict[str, object]]) -> None:
    (root / "desired").mkdir(parents=True, exist_ok=True)
    (root / "desired" / "base.yaml").write_text(BASE)
    docs = []
    for i, c in enumerate(certs):
        domains = ", ".join(f"{d}.example.com" for d in c["domains"])  # type: ignore[attr-defined]
        body = (
            f"apiVersion: certctl/v1\nkind: Certificate\nmetadata: {{name: c{i}}}\nspec:\n  issuer: local\n"
            f"  domains: [{domains}]\n  key: {{algorithm: {c['algorithm']}, reuse: {str(c['reuse']).lower()}}}\n"
            "  stores: [pem]\n"
        )
        if c["files"]:
            body += f"  tasks:\n    - files: {{path: ../out/c{i}}}\n"
        docs.append(body)
    (root / "desired" / "certs.yaml").write_text("---\n".join(docs))


def plan_actions(root: Path, capsys) -> list[str]:
    assert main(["plan", "-d", str(root / "desired"), "--json"]) == 0
    return [a["id"] for a in json.loads(capsys.readouterr().out)["actions"]]


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(first=st.lists(cert, min_size=1, max_size=4), second=st.lists(cert, min_size=1, max_size=4))
def test_apply_then_plan_is_empty_even_after_the_specs_change(capsys, first, second) -> None:
    root = Path(tempfile.mkdtemp(prefix="certctl-prop-"))
    try:
        write(root, first)
        assert main(["apply", "-d", str(root / "desired")]) == 0, capsys.readouterr()
        capsys.readouterr()
        assert plan_actions(root, capsys) == []
        before = {n: v[-1] for n, v in StateDir(root / "state").issued().items()}
        write(root, second)  # edit every spec: some keep their domains, some change, some are new
        assert main(["apply", "-d", str(root / "desired")]) == 0, capsys.readouterr()
        capsys.readouterr()
        assert plan_actions(root, capsys) == []
        after = {n: v[-1] for n, v in StateDir(root / "state").issued().items()}
        for i, c in enumerate(second):
            name = f"c{i}"
            assert after[name].info.sans == tuple(f"{d}.example.com" for d in c["domains"])
            unchanged = (
                i < len(first)
                and first[i]["domains"] == c["domains"]
                and first[i]["algorithm"] == c["algorithm"]
            )
            assert (after[name] == before.get(name)) is unchanged, "only changed specs are reissued"
    finally:
        shutil.rmtree(root)
