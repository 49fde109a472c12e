"""The fleet rig: real prometheus-node-exporter instances (one textfile directory each), a real
Prometheus scraping them with vcheck's shipped rules, and real sshd instances for Ansible; all
on loopback, in temporary directories, started and stopped by fixtures."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import yaml

from tests.rig.common import REPO, rig_fail

RULES = REPO / "deploy" / "prometheus" / "vcheck-rules.yaml"


def rfc3339(text: str) -> float:
    """Prometheus' timestamps (RFC 3339, nanoseconds, UTC: an alert's activeAt) as unix time."""
    import datetime as dt

    base, _, frac = text.rstrip("Z").partition(".")
    t = dt.datetime.strptime(base, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=dt.timezone.utc).timestamp()
    return t + (float("0." + frac) if frac else 0.0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _exe(*names: str) -> str:
    for n in names:
        found = shutil.which(n) or (n if os.path.isabs(n) and os.access(n, os.X_OK) else None)
        if found:
            return found
    rig_fail(f"{names[0]} is not installed (scripts/setup.sh installs it)")
    raise AssertionError  # unreachable: rig_fail raises


def _wait_http(url: str, proc: subprocess.Popen, what: str, log: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=1).read()
            return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                rig_fail(f"{what} did not start", log.read_text(errors="replace")[-800:] if log.exists() else "")
            time.sleep(0.1)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class NodeExporter:
    """node_exporter with only its textfile collector, as a node's cron mode has it."""

    textdir: Path
    port: int
    proc: subprocess.Popen

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def textfile(self) -> Path:
        return self.textdir / "vcheck.prom"

    def stop(self) -> None:
        _stop(self.proc)


def start_node_exporter(workdir: Path) -> NodeExporter:
    """node_exporter on a free loopback port, its textfile directory under WORKDIR."""
    exe = _exe("prometheus-node-exporter", "node_exporter")
    workdir.mkdir(parents=True)
    textdir = workdir / "textfile"
    textdir.mkdir()
    port = free_port()
    log = workdir / "node-exporter.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen([exe, f"--web.listen-address=127.0.0.1:{port}", "--collector.disable-defaults",
                                 "--collector.textfile", f"--collector.textfile.directory={textdir}"],
                                stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    ne = NodeExporter(textdir, port, proc)
    try:
        _wait_http(f"http://{ne.target}/metrics", proc, "node_exporter", log)
    except BaseException:
        ne.stop()
        raise
    return ne


@pytest.fixture
def node_exporters(tmp_path) -> Iterator[Callable[[int], list[NodeExporter]]]:
    """start(n): n node_exporters on loopback ports, each with its own textfile directory."""
    started: list[NodeExporter] = []

    def start(n: int) -> list[NodeExporter]:
        out = []
        for _ in range(n):
            ne = start_node_exporter(tmp_path / f"node-exporter-{len(started)}")
            started.append(ne)
            out.append(ne)
        return out

    yield start
    for ne in started:
        ne.stop()


def tuned_rules(stale_after: float, max_failing_ratio: float, for_: str = "0s") -> dict[str, Any]:
    """The shipped rules with their knobs set as an operator sets them (README: the knobs):
    here for a rig whose cron runs every few seconds instead of every 5 minutes."""
    doc = yaml.safe_load(RULES.read_text())
    knobs = {"vcheck:config:stale_after_seconds": f"vector({stale_after:g})",
             "vcheck:config:max_failing_ratio": f"vector({max_failing_ratio:g})"}
    for group in doc["groups"]:
        for rule in group["rules"]:
            if rule.get("record") in knobs:
                rule["expr"] = knobs.pop(rule["record"])
            if "alert" in rule and "for" in rule:
                rule["for"] = for_
    assert not knobs, f"knobs not found in {RULES}: {knobs}"
    return doc


@dataclass
class Prometheus:
    url: str
    proc: subprocess.Popen
    config: Path
    log: Path
    targets: list[str] = field(default_factory=list)

    def api(self, path: str, **params: str) -> Any:
        q = ("?" + urllib.parse.urlencode(params)) if params else ""
        doc = json.loads(urllib.request.urlopen(f"{self.url}{path}{q}", timeout=10).read())
        assert doc["status"] == "success", doc
        return doc["data"]

    def query(self, promql: str) -> list[dict[str, Any]]:
        return self.api("/api/v1/query", query=promql)["result"]

    def alerts(self, name: str | None = None, state: str = "firing") -> list[dict[str, Any]]:
        return [a for a in self.api("/api/v1/alerts")["alerts"]
                if (name is None or a["labels"]["alertname"] == name) and a["state"] == state]

    def wait_for(self, what: str, probe: Callable[[], Any], timeout: float = 90) -> Any:
        """Poll until probe() is truthy; a rig this small converges in seconds, the bound is
        for a loaded CI machine and is no figure of merit."""
        deadline = time.monotonic() + timeout
        while True:
            got = probe()
            if got:
                return got
            if time.monotonic() > deadline or self.proc.poll() is not None:
                pytest.fail(f"Prometheus never showed {what} (log: {self.log.read_text(errors='replace')[-600:]})")
            time.sleep(0.25)

    def stop(self) -> None:
        _stop(self.proc)


def start_prometheus(workdir: Path, targets: list[str], rules: dict[str, Any] | None = None, interval: str = "1s",
                     storage: Path | None = None) -> Prometheus:
    """Prometheus on a free loopback port scraping TARGETS as job "node" and evaluating RULES;
    its data in STORAGE (e.g. blocks backfilled by promtool) or under WORKDIR."""
    exe = _exe("prometheus")
    workdir.mkdir(parents=True)
    config: dict[str, Any] = {"global": {"scrape_interval": interval, "evaluation_interval": interval,
                                         "scrape_timeout": interval}}
    if targets:
        config["scrape_configs"] = [{"job_name": "node", "static_configs": [{"targets": targets}]}]
    if rules is not None:
        (workdir / "rules.yaml").write_text(yaml.safe_dump(rules, sort_keys=False))
        config["rule_files"] = [str(workdir / "rules.yaml")]
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = workdir / "prometheus.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen([exe, f"--config.file={workdir / 'prometheus.yml'}",
                                 f"--storage.tsdb.path={storage or workdir / 'data'}",
                                 f"--web.listen-address=127.0.0.1:{port}"],
                                stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    p = Prometheus(f"http://127.0.0.1:{port}", proc, workdir / "prometheus.yml", log, list(targets))
    try:
        _wait_http(f"{p.url}/-/ready", proc, "prometheus", log, timeout=120)
    except BaseException:
        p.stop()
        raise
    return p


@pytest.fixture
def prometheus_server(tmp_path) -> Iterator[Callable[..., Prometheus]]:
    """start(targets, rules, interval): a real Prometheus scraping the targets as job "node"
    and evaluating the rules, with its own data directory, on a loopback port."""
    started: list[Prometheus] = []

    def start(targets: list[str], rules: dict[str, Any] | None = None, interval: str = "1s") -> Prometheus:
        p = start_prometheus(tmp_path / f"prometheus-{len(started)}", targets, rules, interval)
        started.append(p)
        return p

    yield start
    for p in started:
        p.stop()


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A loopback TCP port that completes the handshake and never answers: a Prometheus too
    slow to answer, as a client sees it."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    try:
        yield f"http://127.0.0.1:{s.getsockname()[1]}"
    finally:
        s.close()


@pytest.fixture
def trickling_server() -> Iterator[str]:
    """A loopback HTTP server that answers 200 at once and then sends its body a byte at a time,
    slower than any client waits: a Prometheus too slow to finish its answer."""
    import threading

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    stop = threading.Event()

    def serve() -> None:
        srv.settimeout(0.2)
        conns = []
        while not stop.is_set():
            try:
                c, _ = srv.accept()
                c.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000000\r\n\r\n{")
                conns.append(c)
            except OSError:
                pass
            for c in conns:
                try:
                    c.send(b" ")
                except OSError:
                    pass
        for c in conns:
            c.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{srv.getsockname()[1]}"
    finally:
        stop.set()
        t.join()
        srv.close()


# --- sshd for Ansible ---------------------------------------------------------------------

@dataclass
class Sshd:
    port: int
    node: str
    proc: subprocess.Popen

    def stop(self) -> None:
        _stop(self.proc)


@dataclass
class SshRig:
    key: Path                     # the client's private key, made by the test
    known_hosts: Path
    hosts: list[Sshd]


@pytest.fixture
def sshd_hosts(tmp_path) -> Iterator[Callable[[list[str]], SshRig]]:
    """start(names): one real sshd per name on a loopback port, with host and client keys made
    here; each sets VCHECK_NODE_NAME for its sessions (SetEnv), so each answers as a node."""
    sshd = _exe("/usr/sbin/sshd", "sshd")
    keygen = _exe("ssh-keygen")
    started: list[Sshd] = []

    def start(names: list[str]) -> SshRig:
        d = tmp_path / "ssh"
        d.mkdir(mode=0o700)
        key = d / "id_ed25519"
        subprocess.run([keygen, "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
        host_key = d / "host_ed25519"
        subprocess.run([keygen, "-q", "-t", "ed25519", "-N", "", "-f", str(host_key)], check=True)
        authorized = d / "authorized_keys"
        shutil.copy(key.with_suffix(".pub"), authorized)
        os.chmod(authorized, 0o600)
        known = d / "known_hosts"
        hosts = []
        privsep = Path("/run/sshd")       # sshd's privilege-separation directory must exist
        privsep.mkdir(mode=0o755, exist_ok=True)
        lines = []
        for name in names:
            port = free_port()
            conf = d / f"sshd-{name}.conf"
            conf.write_text("\n".join([
                f"Port {port}", "ListenAddress 127.0.0.1", f"HostKey {host_key}", f"PidFile {d / name}.pid",
                f"AuthorizedKeysFile {authorized}", "PasswordAuthentication no", "KbdInteractiveAuthentication no",
                "PubkeyAuthentication yes", "PermitRootLogin prohibit-password", "UsePAM no", "StrictModes no",
                f"SetEnv VCHECK_NODE_NAME={name}", "Subsystem sftp internal-sftp", "LogLevel ERROR", ""]))
            log = d / f"sshd-{name}.log"
            with open(log, "wb") as fh:
                proc = subprocess.Popen([sshd, "-D", "-e", "-f", str(conf)], stdout=fh, stderr=subprocess.STDOUT,
                                        start_new_session=True)
            h = Sshd(port, name, proc)
            started.append(h)
            hosts.append(h)
            lines.append(f"[127.0.0.1]:{port} " + host_key.with_suffix(".pub").read_text().split(" ", 2)[0] + " "
                         + host_key.with_suffix(".pub").read_text().split(" ", 2)[1])
            deadline = time.monotonic() + 15
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        rig_fail(f"sshd for {name} did not start", log.read_text(errors="replace")[-500:])
                    time.sleep(0.1)
        known.write_text("\n".join(lines) + "\n")
        return SshRig(key, known, hosts)

    yield start
    for h in started:
        h.stop()

