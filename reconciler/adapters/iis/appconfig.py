"""applicationHost.config: read the sites, bindings and FTP certificates, and edit them losslessly.

The file is kept as the bytes it was read from. A position-tracking parse (expat) finds the byte
span of every element; an edit splices new text into the original bytes and re-parses, so
comments, unknown elements and attributes, attribute order, quoting, indentation and line endings
all survive. New ``<binding>`` elements take the indentation of their siblings. When nothing was
edited, :meth:`AppHostConfig.to_bytes` returns the original bytes unchanged.

Only UTF-8 files (with or without a byte-order mark) are supported, which is what IIS writes.
Pure: bytes in, values and bytes out; no file is read or written here.
"""

from __future__ import annotations

import ipaddress
import re
import xml.parsers.expat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from reconciler.core.iis_rules import ADDRESS_PROTOCOLS
from reconciler.core.model import Binding, Site, SiteState

FILE_NAME = "applicationHost.config"
_DEFAULT_FTP_STORE = "MY"


class ConfigError(ValueError):
    """applicationHost.config cannot be read: names the host, the file and, when known, the line."""

    def __init__(
        self, message: str, *, host: str = "", file: str = FILE_NAME, line: int | None = None
    ) -> None:
        self.host = host
        self.file = file
        self.line = line
        self.reason = message
        where = f"{file}:{line}" if line is not None else file
        super().__init__(f"IIS host {host!r}: {where}: {message}" if host else f"{where}: {message}")


class EditError(ValueError):
    """A requested edit does not fit the configuration (no such site or binding, a duplicate …)."""


# --- bindingInformation ------------------------------------------------------------------------


def parse_binding_information(information: str) -> tuple[str, int, str]:
    """``IP:port:host`` split on the last two colons -> (ip, port, host).

    ``ip`` is ``*`` for All Unassigned (written ``*`` or empty), an IPv4 address, or an IPv6 address
    in brackets as written; ``host`` is lower-cased ('' = catch-all; a host written ``*``, as IIS Express
    writes ``*:44300:*``, is the same catch-all). Raises ValueError with a reason.
    """
    parts = information.rsplit(":", 2)
    if len(parts) != 3:
        raise ValueError(f"bindingInformation {information!r} is not IP:port:host")
    ip, port_text, host = parts
    if ip in ("", "*"):
        ip = "*"
    elif ip.startswith("["):
        if not ip.endswith("]"):
            raise ValueError(f"bindingInformation {information!r}: unterminated IPv6 address")
        try:
            ipaddress.IPv6Address(ip[1:-1])
        except ValueError as err:
            raise ValueError(f"bindingInformation {information!r}: {err}") from None
    else:
        try:
            ipaddress.IPv4Address(ip)
        except ValueError:
            raise ValueError(
                f"bindingInformation {information!r}: {ip!r} is not '*', an IPv4 address or a bracketed IPv6 address"
            ) from None
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(
            f"bindingInformation {information!r}: port {port_text!r} is not a number from 1 to 65535"
        )
    if any(c.isspace() or c in "/\\" for c in host):
        raise ValueError(f"bindingInformation {information!r}: host name {host!r} is not valid")
    return ip, int(port_text), "" if host == "*" else host.lower()


def make_binding(site: str, protocol: str, information: str, ssl_flags: int = 0) -> Binding:
    """A Binding value; http/https/ftp information is parsed, other protocols are kept raw."""
    if protocol.lower() not in ADDRESS_PROTOCOLS:
        return Binding(site=site, protocol=protocol, information=information, ssl_flags=ssl_flags)
    try:
        ip, port, host = parse_binding_information(information)
    except ValueError as err:
        return Binding(
            site=site, protocol=protocol, information=information, ssl_flags=ssl_flags, parse_error=str(err)
        )
    return Binding(
        site=site,
        protocol=protocol,
        information=information,
        ip=ip,
        port=port,
        host=host,
        ssl_flags=ssl_flags,
    )


def same_binding(a_protocol: str, a_info: str, b_protocol: str, b_info: str) -> bool:
    """(protocol, bindingInformation) identity as IIS sees it (case-insensitive)."""
    return a_protocol.lower() == b_protocol.lower() and a_info.lower() == b_info.lower()


# --- the position-tracking tree ----------------------------------------------------------------------


@dataclass(eq=False)
class _Node:
    tag: str
    attrs: dict[str, str]
    start: int  # offset of '<'
    start_tag_end: int  # offset just after the start tag's '>'
    line: int
    empty: bool  # written <x ... />
    parent: _Node | None = None
    end: int = -1  # offset just after the element
    end_tag_start: int = -1  # offset of '</x>' (== end for an empty element)
    children: list[_Node] = field(default_factory=list)

    def child(self, tag: str) -> _Node | None:
        return next((c for c in self.children if c.tag == tag), None)

    def path(self, *tags: str) -> _Node | None:
        node: _Node | None = self
        for tag in tags:
            node = node.child(tag) if node else None
        return node


def _tag_end(data: bytes, pos: int) -> int:
    """Offset just after the '>' that closes the tag starting at ``pos`` (quotes respected)."""
    quote = 0
    i = pos
    n = len(data)
    while i < n:
        c = data[i]
        if quote:
            if c == quote:
                quote = 0
        elif c in (0x22, 0x27):
            quote = c
        elif c == 0x3E:
            return i + 1
        i += 1
    raise ValueError("unterminated tag")


def _parse_tree(data: bytes, *, host: str, file: str) -> _Node:
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise ConfigError("UTF-16 files are not supported (IIS writes UTF-8)", host=host, file=file)
    parser = xml.parsers.expat.ParserCreate()
    root = _Node(tag="", attrs={}, start=0, start_tag_end=0, line=0, empty=False)
    stack = [root]

    def on_start(tag: str, attrs: dict[str, str]) -> None:
        pos = parser.CurrentByteIndex
        tag_end = _tag_end(data, pos)
        node = _Node(
            tag=tag,
            attrs=dict(attrs),
            start=pos,
            start_tag_end=tag_end,
            line=parser.CurrentLineNumber,
            empty=data[tag_end - 2 : tag_end] == b"/>",
            parent=stack[-1],
        )
        stack[-1].children.append(node)
        stack.append(node)

    def on_end(tag: str) -> None:
        node = stack.pop()
        if node.empty:
            node.end_tag_start = node.end = node.start_tag_end
        else:
            node.end_tag_start = parser.CurrentByteIndex
            node.end = _tag_end(data, node.end_tag_start)

    parser.StartElementHandler = on_start
    parser.EndElementHandler = on_end
    try:
        parser.Parse(data, True)
    except xml.parsers.expat.ExpatError as err:
        raise ConfigError(
            f"not well-formed XML: {xml.parsers.expat.ErrorString(err.code)} (column {err.offset + 1})",
            host=host,
            file=file,
            line=err.lineno,
        ) from None
    root.end = len(data)
    return root


# --- escaping and text helpers -------------------------------------------------------------------------


def xml_attr_escape(value: str, quote: str = '"') -> str:
    out = value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    out = out.replace("\t", "&#9;").replace("\n", "&#10;").replace("\r", "&#13;")
    return out.replace('"', "&quot;") if quote == '"' else out.replace("'", "&apos;")


_ATTR_RE = re.compile(rb"""(\s+)([^\s=/>]+)(\s*=\s*)("[^"]*"|'[^']*')""")


def _indent_of(data: bytes, pos: int) -> bytes | None:
    """The whitespace before ``pos`` on its line, or None when something else precedes it on the line."""
    line_start = data.rfind(b"\n", 0, pos) + 1
    prefix = data[line_start:pos]
    return prefix if prefix.strip(b" \t") == b"" else None


def _remove_span(data: bytes, start: int, end: int) -> bytes:
    """Remove [start, end); when that is all a line holds, remove the whole line."""
    line_start = data.rfind(b"\n", 0, start) + 1
    line_end = data.find(b"\n", end)
    line_end = len(data) if line_end < 0 else line_end
    before, after = data[line_start:start], data[end:line_end]
    if before.strip(b" \t") == b"" and after.strip(b" \t\r") == b"" and line_start > 0:
        nl_start = line_start - 1
        if nl_start > 0 and data[nl_start - 1 : nl_start] == b"\r":
            nl_start -= 1
        cut_end = line_end - 1 if data[line_end - 1 : line_end] == b"\r" and line_end > end else line_end
        return data[:nl_start] + data[cut_end:]
    return data[:start] + data[end:]


# --- the config ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FtpSsl:
    cert_hash: str | None  # upper-case, None when unset or empty
    store: str | None
    present: bool  # the serverCertHash attribute is written (even empty): it overrides siteDefaults


@dataclass(frozen=True, slots=True)
class SiteConfig:
    """A <site> as configured (state comes from elsewhere: the running server)."""

    name: str
    id: int
    server_auto_start: bool | None
    physical_path: str
    bindings: tuple[Binding, ...]
    ftp: FtpSsl
    line: int

    def to_site(self, state: SiteState, defaults: FtpSsl | None = None) -> Site:
        ftp = self.ftp
        if not ftp.present and defaults is not None and self.has_ftp:
            ftp = defaults
        return Site(
            name=self.name,
            id=self.id,
            physical_path=self.physical_path,
            state=state,
            bindings=self.bindings,
            ftp_cert_hash=ftp.cert_hash,
            ftp_cert_store=ftp.store if ftp.cert_hash else None,
        )

    @property
    def has_ftp(self) -> bool:
        return any(b.protocol.lower() == "ftp" for b in self.bindings)


def _ftp_of(node: _Node | None) -> FtpSsl:
    ssl = node.path("ftpServer", "security", "ssl") if node else None
    if ssl is None or "serverCertHash" not in ssl.attrs:
        return FtpSsl(None, None, present=False)
    raw = ssl.attrs["serverCertHash"].strip().replace(" ", "").upper()
    return FtpSsl(raw or None, ssl.attrs.get("serverCertStoreName") or _DEFAULT_FTP_STORE, present=True)


class AppHostConfig:
    """One applicationHost.config, parsed; edits splice into the original bytes."""

    def __init__(self, data: bytes, *, host: str = "", file: str = FILE_NAME) -> None:
        self.host = host
        self.file = file
        self.original = data
        self._data = data
        self._root = _parse_tree(data, host=host, file=file)
        self._newline = b"\r\n" if b"\r\n" in data else b"\n"
        self._unit = self._guess_indent_unit()

    @classmethod
    def parse(cls, data: bytes, *, host: str = "", file: str = FILE_NAME) -> AppHostConfig:
        return cls(data, host=host, file=file)

    # -- reading --

    @property
    def changed(self) -> bool:
        return self._data != self.original

    def to_bytes(self) -> bytes:
        return self._data

    def _sites_node(self) -> _Node | None:
        # in applicationHost.config, or the root element of the file a configSource names
        return self._root.path("configuration", "system.applicationHost", "sites") or self._root.child(
            "sites"
        )

    def _site_nodes(self) -> list[_Node]:
        sites = self._sites_node()
        return [c for c in sites.children if c.tag == "site"] if sites else []

    def site_configs(self) -> tuple[SiteConfig, ...]:
        return tuple(self._site_config(n) for n in self._site_nodes())

    def _site_config(self, node: _Node) -> SiteConfig:
        name = node.attrs.get("name", "")
        try:
            site_id = int(node.attrs.get("id", "0"))
        except ValueError:
            site_id = 0
        auto = node.attrs.get("serverAutoStart")
        physical = ""
        for app in node.children:
            if app.tag == "application" and app.attrs.get("path", "/") == "/":
                vdir = next(
                    (v for v in app.children if v.tag == "virtualDirectory" and v.attrs.get("path") == "/"),
                    None,
                )
                if vdir is not None:
                    physical = vdir.attrs.get("physicalPath", "")
                break
        bindings: list[Binding] = []
        bnode = node.child("bindings")
        for b in bnode.children if bnode else []:
            if b.tag != "binding":
                continue
            flags_text = b.attrs.get("sslFlags", "0").strip() or "0"
            try:
                flags = int(flags_text)
            except ValueError:
                flags = _flags_from_names(flags_text)
            binding = make_binding(
                name, b.attrs.get("protocol", ""), b.attrs.get("bindingInformation", ""), flags
            )
            if flags < 0:
                binding = Binding(
                    site=name,
                    protocol=binding.protocol,
                    information=binding.information,
                    parse_error=f"sslFlags {flags_text!r} is not a number",
                )
            bindings.append(binding)
        return SiteConfig(
            name=name,
            id=site_id,
            server_auto_start=None if auto is None else auto.lower() == "true",
            physical_path=physical,
            bindings=tuple(bindings),
            ftp=_ftp_of(node),
            line=node.line,
        )

    def site_defaults_ftp(self) -> FtpSsl:
        sites = self._sites_node()
        return _ftp_of(sites.child("siteDefaults") if sites else None)

    def sites(self, stopped: Iterable[str] = (), started: Iterable[str] = ()) -> tuple[Site, ...]:
        """The sites as model values; FTP sites without their own certificate inherit <siteDefaults>'.

        ``stopped`` and ``started`` are what the running server says (a site started or stopped by hand since
        the server came up); a site it does not mention is in the state the server started it in: started,
        unless its ``serverAutoStart`` is ``false`` (IIS then does not start it with the server)."""
        stopped_lower = {s.lower() for s in stopped}
        started_lower = {s.lower() for s in started}
        defaults = self.site_defaults_ftp()

        def state(c: SiteConfig) -> SiteState:
            if c.name.lower() in stopped_lower:
                return SiteState.stopped
            if c.name.lower() in started_lower or c.server_auto_start is not False:
                return SiteState.started
            return SiteState.stopped

        return tuple(c.to_site(state(c), defaults) for c in self.site_configs())

    def is_sites_file(self) -> bool:
        """Is this the file a ``<sites configSource>`` names (its root element is <sites>)?"""
        return self._root.child("sites") is not None

    def config_source(self) -> tuple[str, int] | None:
        """(file, line) when the <sites> section is moved to another file (``<sites configSource="…">``)."""
        sites = self._root.path("configuration", "system.applicationHost", "sites")
        if sites is None or "configSource" not in sites.attrs:
            return None
        return sites.attrs["configSource"], sites.line

    def problems(self) -> tuple[str, ...]:
        out: list[str] = []
        if self._sites_node() is None:
            out.append(
                f"{self.file}: has no <configuration><system.applicationHost><sites> section: no site is seen"
            )
        seen_names: set[str] = set()
        for c in self.site_configs():
            where = f"{self.file}:{c.line}"
            if not c.name:
                out.append(f"{where}: a site has no name")
            elif c.name.lower() in seen_names:
                out.append(f"{where}: site name {c.name!r} is used twice")
            seen_names.add(c.name.lower())
            if c.id <= 0:
                out.append(f"{where}: site {c.name!r} has no valid id")
            seen: set[tuple[str, str]] = set()
            for b in c.bindings:
                if b.parse_error:
                    out.append(f"{where}: site {c.name!r}: {b.protocol} binding left alone: {b.parse_error}")
                key = (b.protocol.lower(), b.information.lower())
                if key in seen:
                    out.append(
                        f"{where}: site {c.name!r}: binding {b.protocol} {b.information!r} is written twice"
                    )
                seen.add(key)
        return tuple(out)

    # -- locating --

    def _site(self, name: str) -> _Node:
        for node in self._site_nodes():
            if node.attrs.get("name", "").lower() == name.lower():
                return node
        raise EditError(f"IIS host {self.host!r}: no site named {name!r}")

    def _binding(self, site: str, protocol: str, information: str) -> _Node:
        bnode = self._site(site).child("bindings")
        for b in bnode.children if bnode else []:
            if b.tag == "binding" and same_binding(
                b.attrs.get("protocol", ""), b.attrs.get("bindingInformation", ""), protocol, information
            ):
                return b
        raise EditError(f"IIS host {self.host!r}: site {site!r} has no {protocol} binding {information!r}")

    def has_binding(self, site: str, protocol: str, information: str) -> bool:
        try:
            self._binding(site, protocol, information)
        except EditError:
            return False
        return True

    # -- editing --

    def add_binding(self, site: str, protocol: str, information: str, ssl_flags: int = 0) -> None:
        node = self._site(site)
        if self.has_binding(site, protocol, information):
            raise EditError(
                f"IIS host {self.host!r}: site {site!r} already has a {protocol} binding {information!r}"
            )
        text = f'<binding protocol="{xml_attr_escape(protocol)}" bindingInformation="{xml_attr_escape(information)}"'
        text += f' sslFlags="{ssl_flags}" />' if ssl_flags else " />"
        bindings = node.child("bindings")
        if bindings is None:
            self._insert_child(
                node, [(0, "<bindings>"), (1, text), (0, "</bindings>")], after_tags=("application",)
            )
        else:
            self._insert_child(bindings, [(0, text)])

    def remove_binding(self, site: str, protocol: str, information: str) -> None:
        b = self._binding(site, protocol, information)
        self._set(_remove_span(self._data, b.start, b.end))

    def set_binding_flags(self, site: str, protocol: str, information: str, ssl_flags: int) -> None:
        b = self._binding(site, protocol, information)
        current = b.attrs.get("sslFlags")
        if current is not None and current.strip().isdigit() and int(current) == ssl_flags:
            return
        if current is None and ssl_flags == 0:
            return
        self._set_attr(b, "sslFlags", str(ssl_flags) if ssl_flags else None)

    def set_ftp_ssl(self, site: str, cert_hash: str | None, store: str | None) -> None:
        """Set (or, with None, remove) the site's ftpServer/security/ssl serverCertHash and serverCertStoreName."""
        node = self._site(site)
        ssl = node.path("ftpServer", "security", "ssl")
        if ssl is None:
            if cert_hash is None:
                return
            ftp = node.child("ftpServer")
            security = ftp.child("security") if ftp else None
            ssl_text = (
                f'<ssl serverCertHash="{xml_attr_escape(cert_hash)}" '
                f'serverCertStoreName="{xml_attr_escape(store or _DEFAULT_FTP_STORE)}" />'
            )
            if security is not None:
                self._insert_child(security, [(0, ssl_text)])
            elif ftp is not None:
                self._insert_child(ftp, [(0, "<security>"), (1, ssl_text), (0, "</security>")])
            else:
                self._insert_child(
                    node,
                    [
                        (0, "<ftpServer>"),
                        (1, "<security>"),
                        (2, ssl_text),
                        (1, "</security>"),
                        (0, "</ftpServer>"),
                    ],
                )
            return
        if ssl.attrs.get("serverCertHash") != cert_hash:
            self._set_attr(ssl, "serverCertHash", cert_hash)
            ssl = self._site(site).path("ftpServer", "security", "ssl")
        want_store = store if cert_hash is not None else None
        if ssl is not None and ssl.attrs.get("serverCertStoreName") != want_store:
            self._set_attr(ssl, "serverCertStoreName", want_store)

    # -- splicing --

    def _set(self, data: bytes) -> None:
        root = _parse_tree(data, host=self.host, file=self.file)  # every edit must leave well-formed XML
        self._data, self._root = data, root

    def _set_attr(self, node: _Node, name: str, value: str | None) -> None:
        tag = self._data[node.start : node.start_tag_end]
        last_end = 1 + len(node.tag.encode())
        for m in _ATTR_RE.finditer(tag):
            last_end = m.end()
            if m.group(2).decode() == name:
                if value is None:
                    new_tag = tag[: m.start()] + tag[m.end() :]
                else:
                    quote = m.group(4)[:1].decode()
                    new_tag = (
                        tag[: m.start(4)]
                        + f"{quote}{xml_attr_escape(value, quote)}{quote}".encode()
                        + tag[m.end(4) :]
                    )
                break
        else:
            if value is None:
                return
            new_tag = tag[:last_end] + f' {name}="{xml_attr_escape(value)}"'.encode() + tag[last_end:]
        self._set(self._data[: node.start] + new_tag + self._data[node.start_tag_end :])

    def _guess_indent_unit(self) -> bytes:
        def walk(node: _Node) -> bytes | None:
            outer = _indent_of(self._data, node.start) if node.tag else None
            for c in node.children:
                inner = _indent_of(self._data, c.start)
                if (
                    outer is not None
                    and inner is not None
                    and len(inner) > len(outer)
                    and inner.startswith(outer)
                ):
                    return inner[len(outer) :]
                found = walk(c)
                if found:
                    return found
            return None

        return walk(self._root) or b"    "

    def _insert_child(
        self, parent: _Node, lines: list[tuple[int, str]], after_tags: tuple[str, ...] = ()
    ) -> None:
        """Insert a block of lines (depth, text) as the last child of ``parent`` (or after its last
        ``after_tags`` child), indented like the siblings."""
        data, nl = self._data, self._newline
        p_indent = _indent_of(data, parent.start)
        anchor = (
            next((c for c in reversed(parent.children) if c.tag in after_tags), None) if after_tags else None
        )
        sibling = anchor or (parent.children[-1] if parent.children else None)
        c_indent = _indent_of(data, sibling.start) if sibling else None
        if c_indent is None and p_indent is not None:
            c_indent = p_indent + self._unit
        inline = p_indent is None or c_indent is None
        block = b"".join(
            (b"" if inline else nl + c_indent + self._unit * depth) + text.encode()  # type: ignore[operator]
            for depth, text in lines
        )
        if anchor is not None:
            self._set(data[: anchor.end] + block + data[anchor.end :])
        elif parent.empty:
            tag = data[parent.start : parent.start_tag_end]
            opened = tag[:-2].rstrip() + b">"
            closing = (b"" if inline else nl + p_indent) + f"</{parent.tag}>".encode()  # type: ignore[operator]
            self._set(data[: parent.start] + opened + block + closing + data[parent.start_tag_end :])
        else:
            at = parent.end_tag_start
            while at > parent.start_tag_end and data[at - 1 : at] in (b" ", b"\t", b"\r", b"\n"):
                at -= 1
            tail = data[at : parent.end_tag_start]
            if not inline and b"\n" not in tail:
                block += nl + p_indent  # type: ignore[operator]
            self._set(data[:at] + block + data[at:])


_FLAG_NAMES = {
    "none": 0,
    "sni": 1,
    "centralcertstore": 2,
    "disablehttp2": 4,
    "disableocspstp": 8,
    "disablequic": 16,
    "disabletls13overtcp": 32,
    "disablelegacytls": 64,
}


def _flags_from_names(text: str) -> int:
    """sslFlags may be written as names ("Sni, CentralCertStore"); -1 when unreadable."""
    total = 0
    for part in text.replace("|", ",").split(","):
        value = _FLAG_NAMES.get(part.strip().lower())
        if value is None:
            return -1
        total |= value
    return total


def expand_variables(physical_path: str, environ: Mapping[str, str]) -> str:
    """``%SystemDrive%\\inetpub`` with its variables expanded, case-insensitively as Windows does; ValueError
    for a variable ``environ`` lacks."""
    lowered = {k.lower(): v for k, v in environ.items()}

    def expand(match: re.Match[str]) -> str:
        value = lowered.get(match.group(1).lower())
        if value is None:
            raise ValueError(f"physical path {physical_path!r}: %{match.group(1)}% is not set")
        return value

    return re.sub(r"%([^%]+)%", expand, physical_path)
