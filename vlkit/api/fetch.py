"""Where images may come from: the media policy, and an http(s) fetch that keeps to it.

The Python pipeline runs as its user, so by default it reads local paths and any URL
(:meth:`MediaPolicy.trusted`). A server takes images from strangers: :meth:`MediaPolicy.server`
refuses local files unless they are under one allowed directory, and fetches http(s) only from
public addresses — checked after DNS resolution, on the address actually connected to (no
DNS rebinding between check and connect), and again at every redirect — unless the host is
listed or private URLs are allowed. A fetch has one wall-clock deadline for the whole download
(a server that drips a byte a second cannot hold it longer) and a size cap, and a refused or
failed fetch says so without telling what, if anything, answered at that address.
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urljoin, urlparse

MAX_DOWNLOAD_BYTES = 64 * 1024 * 1024
_REDIRECTS = (301, 302, 303, 307, 308)


class ImageLoadError(ValueError):
    """An image could not be loaded; the message says which and why."""


class MediaRefused(ImageLoadError):
    """The media policy forbids this image source; the message names the setting that allows it."""


class FetchError(ImageLoadError):
    """An http(s) image could not be fetched in time."""


@dataclass(frozen=True)
class MediaPolicy:
    """Where a request's images may come from and how much of them it may bring.

    Args:
        allow_local: read local paths and ``file://`` URLs.
        allowed_local_media_path: when set, local files are read only from under this
            directory (symlinks resolved); implies ``allow_local``.
        allow_private_urls: fetch http(s) URLs whose host resolves to a loopback, private,
            link-local or otherwise non-public address.
        allowed_media_domains: when not empty, only these hosts (and their subdomains) are
            fetched, whatever their addresses.
        fetch_timeout: seconds for a whole download, connection and redirects included.
        max_download_bytes: larger downloads are refused.
        max_redirects: redirects followed per image.
        max_images: images one request may carry (``None``: no limit).
        max_total_pixels: pixels all of one request's images may have together (``None``: no limit).
        detailed_errors: say why a fetch failed (connection refused, HTTP 404...); a server
            says only that it failed, so that errors do not map its network.
    """

    allow_local: bool = True
    allowed_local_media_path: str | None = None
    allow_private_urls: bool = True
    allowed_media_domains: tuple[str, ...] = field(default_factory=tuple)
    fetch_timeout: float = 10.0
    max_download_bytes: int = MAX_DOWNLOAD_BYTES
    max_redirects: int = 5
    max_images: int | None = None
    max_total_pixels: int | None = None
    detailed_errors: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "allowed_media_domains",
                           tuple(d.strip().lower().rstrip(".") for d in self.allowed_media_domains if d.strip()))
        if self.fetch_timeout <= 0:
            raise ValueError(f"MediaPolicy.fetch_timeout must be > 0, got {self.fetch_timeout}")

    @classmethod
    def trusted(cls, fetch_timeout: float = 10.0) -> MediaPolicy:
        """The Python API's default: local files and every URL, detailed errors."""
        return cls(fetch_timeout=fetch_timeout)

    @classmethod
    def server(
        cls,
        *,
        allowed_local_media_path: str | None = None,
        allowed_media_domains: tuple[str, ...] | list[str] = (),
        allow_private_urls: bool = False,
        fetch_timeout: float = 10.0,
        max_images: int | None = 16,
        max_total_pixels: int | None = 128_000_000,
        max_download_bytes: int = MAX_DOWNLOAD_BYTES,
    ) -> MediaPolicy:
        """The server's default: no local files (unless under ``allowed_local_media_path``), no
        private addresses, 16 images and 128 M pixels per request, terse fetch errors."""
        return cls(
            allow_local=allowed_local_media_path is not None,
            allowed_local_media_path=allowed_local_media_path,
            allow_private_urls=allow_private_urls,
            allowed_media_domains=tuple(allowed_media_domains),
            fetch_timeout=fetch_timeout,
            max_download_bytes=max_download_bytes,
            max_images=max_images,
            max_total_pixels=max_total_pixels,
            detailed_errors=False,
        )

    # -- local files ---------------------------------------------------------------------------
    def local_path(self, path: str) -> Path:
        """``path`` if the policy lets it be read, else :class:`MediaRefused` (which does not
        say whether the file exists)."""
        if not self.allow_local and self.allowed_local_media_path is None:
            raise MediaRefused("local image files are not accepted here (a server reads them only under "
                               "--allowed-local-media-path)")
        p = Path(path).expanduser()
        if self.allowed_local_media_path is not None:
            root = Path(self.allowed_local_media_path).expanduser().resolve()
            try:
                resolved = p.resolve()
            except (OSError, RuntimeError) as exc:
                raise MediaRefused("image path is outside the allowed local media directory") from exc
            if resolved != root and root not in resolved.parents:
                raise MediaRefused("image path is outside the allowed local media directory "
                                   "(--allowed-local-media-path)")
            p = resolved
        return p

    # -- hosts ---------------------------------------------------------------------------------
    def _listed(self, host: str) -> bool:
        host = host.lower().rstrip(".")
        return any(host == d or host.endswith("." + d) for d in self.allowed_media_domains)

    def check_host(self, host: str) -> bool:
        """Whether ``host`` may be fetched at all; ``True`` when its addresses need no check
        (a listed host). :raises MediaRefused: for a host the domain list leaves out."""
        if self.allowed_media_domains:
            if not self._listed(host):
                raise MediaRefused(f"image host {host!r} is not in the allowed media domains "
                                   "(--allowed-media-domains)")
            return True
        return self.allow_private_urls

    def check_address(self, host: str, address: str) -> None:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if not ip.is_global or ip.is_multicast:
            raise MediaRefused(f"image URL host {host!r} is not a public address; a server fetches only "
                               "public URLs (--allow-private-media-urls or --allowed-media-domains allow others)")


def resolve(host: str, port: int, policy: MediaPolicy) -> list[tuple[int, str]]:
    """``(family, address)`` pairs to connect to, every one allowed by ``policy``."""
    skip_check = policy.check_host(host)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise FetchError(f"image URL host {host!r} does not resolve") from exc
    out = []
    for fam, _, _, _, sockaddr in infos:
        addr = str(sockaddr[0])
        if not skip_check:
            policy.check_address(host, addr)  # every address: a mixed answer is refused
        out.append((fam, addr))
    if not out:
        raise FetchError(f"image URL host {host!r} does not resolve")
    return out


class _PinnedConnection(http.client.HTTPConnection):
    """An HTTP connection to one already checked address (the ``Host`` header stays the name)."""

    def __init__(self, host: str, port: int, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self._address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self._address, self.port), self.timeout)


class _PinnedHTTPSConnection(_PinnedConnection):
    def connect(self) -> None:
        super().connect()
        ctx = ssl.create_default_context()
        self.sock = ctx.wrap_socket(self.sock, server_hostname=self.host)


def fetch_url(url: str, policy: MediaPolicy) -> bytes:
    """The body of ``url`` (http or https), following redirects, within ``policy``.

    :raises MediaRefused: the policy forbids the URL or a redirect's target.
    :raises FetchError: it could not be fetched within ``policy.fetch_timeout`` seconds or
        ``policy.max_download_bytes`` (the message is terse unless ``detailed_errors``).
    """
    deadline = time.monotonic() + policy.fetch_timeout
    try:
        return _fetch(url, policy, deadline)
    except MediaRefused:
        raise
    except FetchError as exc:
        if policy.detailed_errors:
            raise
        raise FetchError(_terse(url)) from exc
    except Exception as exc:  # noqa: BLE001 - socket, ssl, http.client errors alike
        if policy.detailed_errors:
            raise FetchError(f"could not fetch image URL {url!r}: {type(exc).__name__}: {exc}") from exc
        raise FetchError(_terse(url)) from exc


def _terse(url: str) -> str:
    shown = url if len(url) < 120 else url[:120] + "..."
    return f"could not fetch image URL {shown!r}: no image came back in time"


def _remaining(deadline: float, url: str) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise FetchError(f"image URL {url!r} took longer than the fetch timeout")
    return left


def _fetch(url: str, policy: MediaPolicy, deadline: float) -> bytes:
    for _ in range(policy.max_redirects + 1):
        parsed = urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise MediaRefused(f"image URL scheme {parsed.scheme!r} is not fetched (http and https only)")
        host = parsed.hostname
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        addresses = resolve(host, port, policy)
        cls = _PinnedHTTPSConnection if parsed.scheme == "https" else _PinnedConnection
        conn = cls(host, port, addresses[0][1], timeout=_remaining(deadline, url))
        try:
            target = (parsed.path or "/") + (f"?{parsed.query}" if parsed.query else "")
            conn.request("GET", target, headers={"User-Agent": "vlkit", "Accept": "image/*"})
            resp = conn.getresponse()
            if resp.status in _REDIRECTS:
                location = resp.getheader("Location")
                if not location:
                    raise FetchError(f"image URL {url!r} redirected without a Location")
                url = urljoin(url, location)
                continue
            if resp.status != 200:
                raise FetchError(f"image URL {url!r} answered HTTP {resp.status}")
            length = resp.getheader("Content-Length")
            if length and length.isdigit() and int(length) > policy.max_download_bytes:
                raise FetchError(f"image URL {url!r} is larger than {policy.max_download_bytes} bytes")
            return _read_body(conn, resp, url, policy, deadline)
        finally:
            conn.close()
    raise FetchError(f"image URL redirected more than {policy.max_redirects} times")


def _read_body(conn: http.client.HTTPConnection, resp: http.client.HTTPResponse, url: str, policy: MediaPolicy,
               deadline: float) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        if conn.sock is not None:
            conn.sock.settimeout(_remaining(deadline, url))  # each read waits only for what is left
        chunk = resp.read1(65536)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > policy.max_download_bytes:
            raise FetchError(f"image URL {url!r} is larger than {policy.max_download_bytes} bytes")
        chunks.append(chunk)
        _remaining(deadline, url)
