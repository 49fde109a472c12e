"""The Docker/podman Engine API client against a stand-in server on a unix socket. No Docker
daemon runs on these machines (only the client is installed), so the server replays the
documented response shapes of GET /containers/json and /containers/{id}/json; the CRI path is
the one tested against a real runtime (tests/integration/test_containers.py)."""
from __future__ import annotations

import json
import socketserver
import threading
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from vcheck.collectors.containers.docker import EngineError, from_docker

CID = "3f2a" * 16
LIST = [{"Id": CID, "Names": ["/k8s_nginx_web-7d9_shop_uid_0"], "State": "running",
         "Labels": {"io.kubernetes.pod.name": "web-7d9"}},
        {"Id": "9" * 64, "Names": ["/exited"], "State": "exited", "Labels": {}}]
DETAIL = {CID: {"Id": CID, "Name": "/k8s_nginx_web-7d9_shop_uid_0",
                "State": {"Running": True, "Pid": 4242},
                "Config": {"Image": "nginx:1.27", "Labels": {"io.kubernetes.container.name": "nginx",
                                                             "io.kubernetes.pod.name": "web-7d9",
                                                             "io.kubernetes.pod.namespace": "shop"}},
                "HostConfig": {"Privileged": True}},
          "9" * 64: {"Id": "9" * 64, "Name": "/exited", "State": {"Running": False, "Pid": 0}}}


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - http.server's naming
        path = self.path.split("/v1.41", 1)[-1]
        if path == "/containers/json":
            body = json.dumps(LIST).encode()
        elif path.startswith("/containers/") and path.endswith("/json"):
            cid = path.split("/")[2]
            if cid not in DETAIL:
                self.send_response(404)
                self.end_headers()
                return
            body = json.dumps(DETAIL[cid]).encode()
        else:
            self.send_response(404)
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class _UnixHTTPServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


@pytest.fixture
def engine_socket(tmp_path):
    path = tmp_path / "docker.sock"
    server = _UnixHTTPServer(str(path), _Handler)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    yield path
    server.shutdown()
    server.server_close()


def test_running_containers_with_kubernetes_names(engine_socket: Path):
    (c,) = from_docker(engine_socket)
    assert (c.id, c.name, c.pod, c.namespace) == (CID, "nginx", "web-7d9", "shop")
    assert c.pid == 4242 and c.privileged is True and c.image == "nginx:1.27" and c.runtime == "docker"


def test_unreachable_socket_is_an_error_naming_it(tmp_path):
    with pytest.raises(EngineError, match="docker.sock"):
        from_docker(tmp_path / "docker.sock")
