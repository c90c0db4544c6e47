"""After an apply: does each ``verify`` endpoint of a certificate whose actions all succeeded serve its
current certificate? (A reload is asynchronous, as nginx's and IIS's are: each endpoint gets a few
seconds to switch before a difference counts as a failure.)"""

from __future__ import annotations

import time
from collections.abc import Iterable

from reconciler.app.world import World
from reconciler.core.planner import current_version
from reconciler.support.logging import get_logger

log = get_logger()

VERIFY_SETTLE = 5.0  # seconds a verify endpoint may take to serve the new certificate after a reload


def verify(world: World, succeeded: Iterable[str], failed: Iterable[str]) -> list[str]:
    """After a certificate's actions succeeded, check each verify endpoint serves the current certificate."""
    prober = world.prober
    failures: list[str] = []
    for name in sorted(set(succeeded) - set(failed)):
        spec = world.desired.certificates.get(name)
        if spec is None or not spec.spec.verify or prober is None:
            continue
        current = current_version(world.state.issued_for(name))
        if current is None:
            continue
        for v in spec.spec.verify:
            sni = v.sni or spec.spec.domains[0].removeprefix("*.")
            # A reload is asynchronous (nginx, IIS): probe again for a few seconds before calling it a mismatch.
            settle = time.monotonic() + min(VERIFY_SETTLE, v.timeout.total_seconds())
            problem: Exception | None = None
            while True:
                try:
                    served = prober.probe(v.endpoint, sni, v.timeout.total_seconds()).thumbprint
                except Exception as exc:  # noqa: BLE001
                    served, problem = None, exc
                if served == current.info.thumbprint or time.monotonic() >= settle:
                    break
                time.sleep(0.2)
            if served is None:
                failures.append(f"verify/{name}: {v.endpoint} (SNI {sni}) could not be probed: {problem}")
                continue
            if served != current.info.thumbprint:
                failures.append(
                    f"verify/{name}: {v.endpoint} (SNI {sni}) serves {served[:8]}, "
                    f"expected the new certificate {current.info.thumbprint[:8]}"
                )
            else:
                log.info("verify.ok", certificate=name, endpoint=v.endpoint, sni=sni, thumbprint=served)
    for f in failures:
        log.error("verify.failed", detail=f)
    return failures
