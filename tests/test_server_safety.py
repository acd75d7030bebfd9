"""A local server stays local: Host and Origin checks (DNS rebinding, a web page posting to localhost), HTTP
Basic auth, and the body cap, on a real `hayai serve` process."""

from __future__ import annotations

import pytest
import requests

from server_process import ServerProcess

AUTH = ("alice", "s3cret")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    home = tmp_path_factory.mktemp("safety") / "home"
    with ServerProcess(home, "--api-auth", "alice:s3cret,bob:pw2", "--max-body-mb", "1",
                       "--cors-allow", "http://localhost:3000") as process:
        yield process


def test_auth_is_enforced_on_every_route_when_set(server):
    for path in ("/sdapi/v1/progress", "/sdapi/v1/sd-models", "/hayai/v1/jobs", "/docs", "/openapi.json"):
        refused = server.get(path)
        assert refused.status_code == 401 and refused.headers["www-authenticate"].startswith("Basic"), path
    assert server.get("/sdapi/v1/progress", auth=("alice", "wrong")).status_code == 401
    assert server.get("/sdapi/v1/progress", auth=("mallory", "s3cret")).status_code == 401
    assert server.get("/sdapi/v1/progress", auth=AUTH).status_code == 200
    assert server.get("/sdapi/v1/progress", auth=("bob", "pw2")).status_code == 200
    assert server.get("/sdapi/v1/progress", headers={"Authorization": "Basic !!!"}).status_code == 401


def test_a_host_name_from_elsewhere_is_refused(server):
    rebound = server.get("/sdapi/v1/progress", auth=AUTH, headers={"Host": f"attacker.example:{server.port}"})
    assert rebound.status_code == 403 and "DNS rebinding" in rebound.json()["detail"]
    for name in ("localhost", "127.0.0.1"):
        assert server.get("/sdapi/v1/progress", auth=AUTH, headers={"Host": f"{name}:{server.port}"}).status_code == 200


def test_a_web_page_from_another_origin_is_refused_unless_allowed(server):
    evil = server.post("/sdapi/v1/interrupt", auth=AUTH, headers={"Origin": "http://evil.example"})
    assert evil.status_code == 403 and "--cors-allow" in evil.json()["detail"]
    null = server.get("/sdapi/v1/progress", auth=AUTH, headers={"Origin": "null"})
    assert null.status_code == 403
    same = server.get("/sdapi/v1/progress", auth=AUTH, headers={"Origin": f"http://127.0.0.1:{server.port}"})
    assert same.status_code == 200 and "access-control-allow-origin" not in same.headers
    allowed = server.get("/sdapi/v1/progress", auth=AUTH, headers={"Origin": "http://localhost:3000"})
    assert allowed.status_code == 200 and allowed.headers["access-control-allow-origin"] == "http://localhost:3000"
    preflight = requests.options(f"{server.url}/sdapi/v1/txt2img", timeout=30, headers={  # no credentials, as browsers
        "Origin": "http://localhost:3000", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type"})
    assert preflight.status_code == 204 and "POST" in preflight.headers["access-control-allow-methods"]
    assert requests.options(f"{server.url}/sdapi/v1/txt2img", timeout=30, headers={
        "Origin": "http://evil.example", "Access-Control-Request-Method": "POST"}).status_code == 403


def test_request_bodies_are_capped(server):
    big = {"prompt": "x" * (2 * 1024 * 1024)}
    refused = server.post("/sdapi/v1/txt2img", big, auth=AUTH)
    assert refused.status_code == 413

    def chunks():  # no Content-Length: the body is counted as it comes
        for _ in range(40):
            yield b"x" * 64 * 1024

    chunked = requests.post(f"{server.url}/sdapi/v1/png-info", data=chunks(), auth=AUTH, timeout=60,
                            headers={"Content-Type": "application/json"})
    assert chunked.status_code == 413
    small = requests.post(f"{server.url}/sdapi/v1/png-info", data=iter([b'{"image": "', b'@@"}']), auth=AUTH,
                          timeout=60, headers={"Content-Type": "application/json"})
    assert small.status_code == 422  # a small chunked body goes through to the route
