"""The media policy and the http(s) fetch: what a server refuses, and how long a fetch may take."""

from __future__ import annotations

import os
import socket
import time

import pytest

from vlkit.api.fetch import FetchError, MediaPolicy, MediaRefused, fetch_url
from vlkit.api.media import ImageLoadError, read_image_bytes

SERVER = MediaPolicy.server()
PRIVATE_OK = MediaPolicy.server(allow_private_urls=True, fetch_timeout=2.0)


def test_server_policy_refuses_private_addresses_before_connecting(media_server):
    for url in (f"{media_server.url}/img.png", "http://localhost:9/x.png", "http://169.254.169.254/latest/meta-data",
                "http://[::1]:9/x.png", "http://10.0.0.1/x.png", "http://0.0.0.0:9/x.png"):
        t0 = time.monotonic()
        with pytest.raises(MediaRefused, match="not a public address"):
            fetch_url(url, SERVER)
        assert time.monotonic() - t0 < 1.0, url  # no connection attempted (169.254.169.254 would hang)
    assert media_server.seen == []


def test_a_public_name_that_resolves_to_a_private_address_is_refused(media_server, monkeypatch):
    real = socket.getaddrinfo

    def fake(host, *args, **kwargs):
        return real("127.0.0.1", *args, **kwargs) if host == "images.example.com" else real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", fake)
    with pytest.raises(MediaRefused, match="'images.example.com' is not a public address"):
        fetch_url(f"http://images.example.com:{media_server.port}/img.png", SERVER)
    assert media_server.seen == []


def test_redirects_are_checked_at_every_hop(media_server):
    """A listed host may redirect only to hosts the policy also allows."""
    listed = MediaPolicy.server(allowed_media_domains=["localhost"])
    assert fetch_url(f"http://localhost:{media_server.port}/img.png", listed) == media_server.png
    media_server.redirect_to = f"http://127.0.0.1:{media_server.port}/img.png"
    with pytest.raises(MediaRefused, match="'127.0.0.1' is not in the allowed media domains"):
        fetch_url(f"http://localhost:{media_server.port}/redirect", listed)
    assert media_server.seen == ["/img.png", "/redirect"]  # the target was never fetched
    media_server.redirect_to = "/img.png"
    assert fetch_url(f"{media_server.url}/redirect", PRIVATE_OK) == media_server.png
    with pytest.raises(FetchError):
        fetch_url(f"{media_server.url}/loop", PRIVATE_OK)


def test_domain_list_admits_only_its_hosts_and_subdomains():
    policy = MediaPolicy.server(allowed_media_domains=["Example.com"])
    assert policy.check_host("example.com") and policy.check_host("cdn.example.com")
    for host in ("notexample.com", "example.com.evil.net", "evil.net"):
        with pytest.raises(MediaRefused, match="allowed media domains"):
            policy.check_host(host)


def test_a_drip_or_a_hang_is_cut_at_the_deadline(media_server):
    for path in ("/drip", "/hang"):
        t0 = time.monotonic()
        with pytest.raises(FetchError):
            fetch_url(f"{media_server.url}{path}", PRIVATE_OK)
        took = time.monotonic() - t0
        assert took < PRIVATE_OK.fetch_timeout + 1.5, (path, took)  # the whole download, not each read


def test_size_cap_and_terse_errors(media_server):
    small = MediaPolicy.server(allow_private_urls=True, max_download_bytes=100)
    with pytest.raises(FetchError) as big:
        fetch_url(f"{media_server.url}/big", small)
    with pytest.raises(FetchError) as missing:
        fetch_url(f"{media_server.url}/nothing-here", small)
    with pytest.raises(FetchError) as closed:
        fetch_url(f"http://127.0.0.1:{_closed_port()}/x.png", small)
    messages = {str(e.value).split("': ", 1)[1] for e in (big, missing, closed)}
    assert messages == {"no image came back in time"}  # a server's errors do not map its network
    detailed = MediaPolicy(max_download_bytes=100)
    with pytest.raises(FetchError, match="HTTP 404"):
        fetch_url(f"{media_server.url}/nothing-here", detailed)
    with pytest.raises(FetchError, match="larger than 100 bytes"):
        fetch_url(f"{media_server.url}/img.png", detailed)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_local_files_refused_by_the_server_without_saying_whether_they_exist(tmp_path):
    real = tmp_path / "a.png"
    real.write_bytes(b"x")
    errors = []
    for source in ("/etc/hostname", "file:///etc/hostname", str(real), str(tmp_path / "missing.png"),
                   f"file://{tmp_path}/missing.png"):
        with pytest.raises(MediaRefused) as e:
            read_image_bytes(source, policy=SERVER)
        errors.append(str(e.value))
    assert len(set(errors)) == 1 and "--allowed-local-media-path" in errors[0]


def test_allowed_local_media_path_admits_only_files_under_it(tmp_path):
    root = tmp_path / "media"
    root.mkdir()
    (root / "ok.png").write_bytes(b"png")
    (tmp_path / "secret.txt").write_bytes(b"secret")
    os.symlink(tmp_path / "secret.txt", root / "link.png")
    policy = MediaPolicy.server(allowed_local_media_path=str(root))
    assert read_image_bytes(str(root / "ok.png"), policy=policy) == b"png"
    assert read_image_bytes(f"file://{root}/ok.png", policy=policy) == b"png"
    for escape in (f"{root}/../secret.txt", str(root / "link.png"), str(tmp_path / "secret.txt")):
        with pytest.raises(MediaRefused, match="outside the allowed local media directory"):
            read_image_bytes(escape, policy=policy)


def test_the_python_api_trusts_its_user(tmp_path, media_server):
    (tmp_path / "a.png").write_bytes(media_server.png)
    assert read_image_bytes(str(tmp_path / "a.png")) == media_server.png
    assert read_image_bytes(f"{media_server.url}/img.png") == media_server.png
    big = tmp_path / "big.bin"
    with open(big, "wb") as f:
        f.truncate(MediaPolicy().max_download_bytes + 1)
    with pytest.raises(ImageLoadError, match="larger than"):
        read_image_bytes(str(big))  # never read whole


def test_image_count_and_pixel_budget_per_request(llava_dir):
    import vlkit
    from vlkit.testing import make_image

    with vlkit.pipeline(llava_dir, engine_config=vlkit.EngineConfig(num_blocks=64)) as pipe:
        enc = pipe.image_encoder
        refs = pipe._prep.conversation(("x", [make_image(40, 40, seed=i) for i in range(3)])).images
        with pytest.raises(ImageLoadError, match="3 images, over the limit of 2 per request"):
            enc.preprocess(refs, MediaPolicy(max_images=2))
        with pytest.raises(ImageLoadError, match="image 2: .*budget of pixels"):
            enc.preprocess(refs, MediaPolicy(max_total_pixels=2 * 40 * 40 + 10))
        assert len(enc.preprocess(refs, MediaPolicy(max_total_pixels=3 * 40 * 40))) == 3
