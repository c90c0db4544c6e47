"""http-01 on IIS as shipped: the token goes under the physical path of the site that serves the name.

For each name, the host is observed (through the BindingHost it is, never its files) and the started
site with an http binding on port 80 for that name is chosen (``core.challenge_rules.iis_site_for``:
exact host, then a wildcard host, then a blank host). The token is written to
``<physical path>/.well-known/acme-challenge/<token>`` beside a ``web.config`` that makes IIS serve
extensionless files there as ``text/plain`` with the static-file handler (IIS refuses unknown
extensions with 404.3 otherwise, and an ASP.NET or PHP site would hand the URL to its own handler).
Both are removed afterwards, unless they were there before.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

from reconciler.adapters.solvers.http01 import WebrootHttp01
from reconciler.core.challenge_rules import iis_problem, iis_site_for
from reconciler.core.spec import HTTP01
from reconciler.ports import ChallengeTask, SiteFolders, SolverError
from reconciler.support.logging import get_logger

log = get_logger()

WEB_CONFIG_NAME = "web.config"
WEB_CONFIG = b"""<?xml version="1.0" encoding="UTF-8"?>
<!-- Written by certctl while an ACME http-01 challenge is open; removed afterwards. -->
<configuration>
  <system.webServer>
    <staticContent>
      <remove fileExtension="." />
      <mimeMap fileExtension="." mimeType="text/plain" />
    </staticContent>
    <handlers>
      <clear />
      <add name="StaticFile" path="*" verb="*" modules="StaticFileModule" resourceType="Either" requireAccess="Read" />
    </handlers>
  </system.webServer>
</configuration>
"""


class IisHttp01:
    """Writes each token under the folder of the IIS site that serves its name on port 80."""

    def __init__(self, host_name: str, hosts: Callable[[str], SiteFolders | None]) -> None:
        self.host_name = host_name
        self._hosts = hosts
        self._lock = threading.Lock()
        self._folders: dict[str, WebrootHttp01] = {}  # one webroot solver per site folder, kept for cleanup

    def __repr__(self) -> str:
        return f"IisHttp01({self.host_name})"

    def _host(self) -> SiteFolders:
        host = self._hosts(self.host_name)
        if host is None:
            raise SolverError(f"http01.iis: IisHost {self.host_name} does not exist")
        return host

    def _webroot(self, folder: str) -> WebrootHttp01:
        with self._lock:
            return self._folders.setdefault(
                folder, WebrootHttp01(folder, companion=(WEB_CONFIG_NAME, WEB_CONFIG))
            )

    def _by_folder(self, tasks: Sequence[ChallengeTask]) -> dict[str, list[ChallengeTask]]:
        host = self._host()
        try:
            state = host.observe()
        except Exception as exc:  # noqa: BLE001 - any failure to read the host is this solver's error
            raise SolverError(f"http01.iis: cannot read IIS host {self.host_name}: {exc}") from None
        groups: dict[str, list[ChallengeTask]] = {}
        for task in tasks:
            if task.kind != HTTP01:
                raise SolverError(f"an http01 solver cannot answer a {task.kind} challenge for {task.domain}")
            problem = iis_problem(self.host_name, state, task.domain)
            if problem:
                raise SolverError(problem)
            site = iis_site_for(state, task.domain)
            assert site is not None
            if not site.physical_path:
                raise SolverError(
                    f"http01.iis: site {site.name} on IIS host {self.host_name} has no physical path"
                )
            folder = host.local_path(site.physical_path)
            log.info(
                "http01.iis.site", domain=task.domain, host=self.host_name, site=site.name, folder=folder
            )
            groups.setdefault(folder, []).append(task)
        return groups

    def prepare(self, tasks: Sequence[ChallengeTask]) -> None:
        for folder, group in self._by_folder(tasks).items():
            self._webroot(folder).prepare(group)

    def cleanup(self, tasks: Sequence[ChallengeTask]) -> None:
        http = [t for t in tasks if t.kind == HTTP01]
        if not http:
            return
        with self._lock:
            known = list(self._folders.values())
        if not known:  # a fresh process (recovery after a crash): find the folders again
            known = [self._webroot(folder) for folder in self._by_folder(http)]
        failures: list[str] = []
        for webroot in known:
            try:
                webroot.cleanup(http)
            except SolverError as exc:
                failures.append(str(exc))
        if failures:
            raise SolverError("; ".join(failures))
