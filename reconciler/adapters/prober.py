"""What a TLS endpoint actually serves: connect with SNI, do not verify, read the leaf certificate."""

from __future__ import annotations

import errno
import socket
import ssl

from cryptography import x509

from reconciler.core.model import CertInfo
from reconciler.support import pki
from reconciler.support.logging import get_logger

log = get_logger()


class ProbeError(Exception):
    """The endpoint could not be probed; the message says why (refused, timed out, no TLS, …)."""


def split_endpoint(endpoint: str) -> tuple[str, int]:
    """'host:port' or '[v6]:port' → (host, port)."""
    endpoint = endpoint.strip()
    if endpoint.startswith("["):
        host, _, rest = endpoint[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    else:
        host, _, port = endpoint.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ProbeError(f"{endpoint!r} is not host:port")
    return host, int(port)


class TlsProber:
    """Prober: the certificate a TLS endpoint serves for an SNI name (no verification: we want to see it)."""

    def probe(self, endpoint: str, sni: str | None, timeout: float) -> CertInfo:
        host, port = split_endpoint(endpoint)
        server_name = sni or (None if _is_ip(host) else host)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        try:
            with (
                socket.create_connection((host, port), timeout=timeout) as raw,
                context.wrap_socket(raw, server_hostname=server_name) as tls,
            ):
                der = tls.getpeercert(binary_form=True)
        except TimeoutError:
            raise ProbeError(f"{endpoint}: no TLS handshake within {timeout:g}s (timed out)") from None
        except ConnectionRefusedError:
            raise ProbeError(f"{endpoint}: connection refused (nothing listens there)") from None
        except ssl.SSLError as exc:
            raise ProbeError(
                f"{endpoint}: TLS handshake failed for SNI {server_name or '(none)'}: {exc.reason or exc}"
            ) from None
        except socket.gaierror as exc:
            raise ProbeError(f"{endpoint}: cannot resolve {host}: {exc.strerror}") from None
        except OSError as exc:
            reason = exc.strerror or errno.errorcode.get(exc.errno or 0, str(exc))
            raise ProbeError(f"{endpoint}: cannot connect: {reason}") from None
        if not der:
            raise ProbeError(f"{endpoint}: the server sent no certificate")
        info = pki.cert_info(x509.load_der_x509_certificate(der))
        log.debug("probe.done", endpoint=endpoint, sni=server_name, thumbprint=info.thumbprint)
        return info


def _is_ip(host: str) -> bool:
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
    except OSError:
        return False
    return True
