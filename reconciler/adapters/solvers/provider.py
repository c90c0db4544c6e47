"""dns-01 through a DNS provider's API, with dns-lexicon (one adapter, dozens of providers).

certctl drives lexicon's provider classes directly, with the zone it determined itself (``zone:`` or
an SOA lookup), so lexicon never guesses the zone from the public-suffix list; and tldextract, which
two providers call on their own, is pointed at the snapshot it ships, so nothing is ever downloaded.
Credentials come only from ``secrets`` (environment or file), are handed to lexicon in memory, and are
masked in every error message.
"""

from __future__ import annotations

import argparse
import functools
import logging
import threading
import time
from collections.abc import Mapping
from typing import Any

import requests

from reconciler.adapters.solvers.records import RecordSolver
from reconciler.core.challenge_rules import ProviderInfo
from reconciler.core.spec import DnsProvider
from reconciler.ports import SolverError
from reconciler.support.logging import get_logger
from reconciler.support.secrets import SecretError, resolve

log = get_logger()

CALL_TIMEOUT = 60.0  # seconds for one record operation against a provider's API, retries included
RETRY_PAUSES = (0.2, 0.5, 1.0, 2.0)
_OFFLINE = threading.Lock()
_offline_done = False


def _offline() -> None:
    """Make tldextract (used by a few lexicon providers) work from its bundled snapshot, never the network."""
    global _offline_done
    with _OFFLINE:
        if _offline_done:
            return
        import tldextract

        extractor = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)
        tldextract.extract = extractor  # type: ignore[assignment]
        tldextract.tldextract.TLD_EXTRACTOR = extractor
        logging.getLogger("lexicon").setLevel(logging.WARNING)  # its debug logs print request data
        _offline_done = True


def known_providers() -> list[str]:
    """The provider names of the installed dns-lexicon (module names; no import)."""
    import pkgutil

    from lexicon._private import providers

    return sorted(m.name for m in pkgutil.iter_modules(providers.__path__) if m.name != "base")


@functools.cache
def provider_info(name: str) -> ProviderInfo | None:
    """What provider ``name`` accepts, from its own ``configure_parser`` (None: no such provider)."""
    if name not in known_providers():
        return None
    module = _module(name)
    parser = argparse.ArgumentParser(add_help=False)
    module.Provider.configure_parser(parser)
    options = tuple((a.dest, " ".join((a.help or "").split())) for a in parser._actions if a.dest != "help")
    return ProviderInfo(name, options)


def catalog(names: set[str]) -> tuple[dict[str, ProviderInfo], list[str]]:
    """The ProviderInfo of each of ``names`` that exists, and every provider name."""
    found = {n: info for n in sorted(names) if (info := provider_info(n)) is not None}
    return found, known_providers()


def _module(name: str) -> Any:
    from lexicon._private.discovery import load_provider_module

    return load_provider_module(name)


class LexiconSolver(RecordSolver):
    kind = "dns01 provider"

    def __init__(self, spec: DnsProvider, environ: Mapping[str, str] | None = None) -> None:
        super().__init__(spec)
        self.spec = spec
        self.environ = environ
        self._secrets: dict[str, str] | None = None

    def __repr__(self) -> str:
        return f"LexiconSolver({self.spec.name}" + (f", zone={self.spec.zone})" if self.spec.zone else ")")

    def _credentials(self) -> dict[str, str]:
        if self._secrets is None:
            values: dict[str, str] = {}
            for key, ref in self.spec.secrets.items():
                try:
                    values[key] = (
                        resolve(ref, dict(self.environ) if self.environ is not None else None)
                        .decode()
                        .strip()
                    )
                except SecretError as exc:
                    raise SolverError(f"dns01 provider {self.spec.name}: secret {key}: {exc}") from None
            self._secrets = values
        return self._secrets

    def _mask(self, text: str) -> str:
        for value in (self._secrets or {}).values():
            if len(value) >= 4:
                text = text.replace(value, "***")
        return text

    def _provider(self, zone: str) -> Any:
        _offline()
        from lexicon.config import ConfigResolver

        options = {
            k: (str(v).lower() if isinstance(v, bool) else str(v)) for k, v in self.spec.options.items()
        }
        config = ConfigResolver().with_dict(  # type: ignore[no-untyped-call]
            {
                "provider_name": self.spec.name,
                "domain": zone,
                "ttl": self.spec.ttl,
                self.spec.name: {**options, **self._credentials()},
            }
        )
        try:
            module = _module(self.spec.name)
        except ImportError as exc:
            raise SolverError(
                f"dns01 provider {self.spec.name} needs a Python package that is not installed "
                f"({exc.name}): pip install 'dns-lexicon[{self.spec.name}]'"
            ) from None
        provider = module.Provider(config)
        provider.authenticate()
        return provider

    def _call(self, what: str, zone: str, name: str, value: str) -> None:
        """One record operation in a worker thread, so a provider API that never answers (lexicon sets no
        request timeouts) cannot hold the order past ``CALL_TIMEOUT``."""
        outcome: list[BaseException | None] = []

        def run() -> None:
            try:
                self._call_retrying(what, zone, name, value)
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
                outcome.append(exc)
            else:
                outcome.append(None)

        worker = threading.Thread(target=run, name=f"dns01-{self.spec.name}", daemon=True)
        worker.start()
        worker.join(CALL_TIMEOUT)
        if not outcome:
            raise SolverError(
                f"dns01 provider {self.spec.name}: {what} TXT {name} in zone {zone}: no answer from the "
                f"provider's API within {CALL_TIMEOUT:g}s"
            )
        if outcome[0] is not None:
            raise outcome[0]

    def _call_retrying(self, what: str, zone: str, name: str, value: str) -> None:
        """Transient answers (5xx, 429, a connection that failed) are retried after 0.2, 0.5, 1 and 2 s:
        provider APIs throttle and stumble under parallel writes; anything else fails at once."""
        for pause in (*RETRY_PAUSES, None):
            try:
                self._call_now(what, zone, name, value)
                return
            except _Transient as exc:
                if pause is None:
                    raise SolverError(str(exc)) from None
                log.info(
                    "dns01.provider.retry", provider=self.spec.name, name=name, error=str(exc), pause=pause
                )
                time.sleep(pause)

    def _call_now(self, what: str, zone: str, name: str, value: str) -> None:
        try:
            provider = self._provider(zone)
            try:
                if what == "create":
                    provider.create_record("TXT", name, value)
                else:
                    provider.delete_record(None, "TXT", name, value)
            finally:
                provider.cleanup()
        except SolverError:
            raise
        except ImportError as exc:
            raise SolverError(
                f"dns01 provider {self.spec.name} needs a Python package that is not installed "
                f"({exc.name}): pip install 'dns-lexicon[{self.spec.name}]'"
            ) from None
        except Exception as exc:  # noqa: BLE001 - providers raise anything; the message is what the user needs
            error = _Transient if _transient(exc) else SolverError
            raise error(
                self._mask(
                    f"dns01 provider {self.spec.name}: {'adding' if what == 'create' else 'deleting'} TXT {name} in zone "
                    f"{zone}: {_describe(exc)}"
                )
            ) from None

    def _create(self, zone: str, name: str, value: str) -> None:
        self._call("create", zone, name, value)

    def _delete(self, zone: str, name: str, value: str) -> None:
        self._call("delete", zone, name, value)


class _Transient(SolverError):
    """A provider answer worth retrying."""


def _transient(exc: Exception) -> bool:
    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        return exc.response.status_code >= 500 or exc.response.status_code == 429
    return isinstance(exc, requests.ConnectionError | requests.Timeout)


def _describe(exc: Exception) -> str:
    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        body = " ".join(exc.response.text.split())[:300]
        return f"{exc.response.status_code} {exc.response.reason}" + (f": {body}" if body else "")
    if isinstance(exc, requests.RequestException):
        return f"cannot reach the provider's API ({type(exc).__name__}: {exc})"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
