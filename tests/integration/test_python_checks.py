"""Python checks, for real: an observing test function under a CPU hog, the built-in checks
against real qemu guests and real containers (nsenter), replays, and broken check files."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.rig.common import REPO, VCHECK
from tests.rig.containerd import container_spec
from tests.rig.io import cpu_hogs

pytestmark = pytest.mark.rig

CHECKS = REPO / "checks"

OBSERVING = '''\
from vcheck import observe, quantity


@observe("cpu.user", per="cpu", window="3s")
def test_user_time(observed):
    assert observed.max < quantity("50%")
'''

YAML = "policy: y\nchecks:\n  - {id: idle, metric: cpu.idle, expect: '>= 0%', window: 3s}\n"


def vcheck(*args: str, cwd: Path, env: dict | None = None, timeout: float = 180):
    r = subprocess.run(VCHECK + ["run", *args], capture_output=True, text=True, cwd=cwd, timeout=timeout,
                       env={**os.environ, **(env or {})})
    assert "Traceback" not in r.stderr, r.stderr
    return r


def by_id(report: Path) -> dict[str, dict]:
    return {r["nodeid"].split("::", 1)[1]: r for r in json.loads(report.read_text())["results"]}


def test_an_observing_function_fails_its_hogged_cpu_with_evidence(tmp_path):
    (tmp_path / "test_user.py").write_text(OBSERVING)
    (tmp_path / "y.yaml").write_text(YAML)
    report = tmp_path / "r.json"
    with cpu_hogs(cpu=1, n=1):
        r = vcheck("test_user.py", "y.yaml", "--json", str(report), cwd=tmp_path)
    assert r.returncode == 1, r.stdout + r.stderr
    results = by_id(report)
    cpu1, cpu0 = results["test_user_time[cpu1]"], results["test_user_time[cpu0]"]
    assert cpu1["outcome"] == "fail" and cpu1["layer"] == "guest" and cpu1["metric"] == "cpu.user"
    assert cpu1["entities"][0]["series"]["max"] > 50 and cpu1["entities"][0]["samples"] == 3
    # cpu0 carries whatever else the shared machine runs: its verdict follows its own figure
    assert cpu0["outcome"] == ("pass" if cpu0["entities"][0]["series"]["max"] < 50 else "fail")
    assert "assert 100.0 < 50.0" in r.stdout or "< 50.0" in r.stdout           # pytest's rewritten assert
    assert "vcheck evidence" in r.stdout and "cpu.user [cpu1] over 3s: 3 samples" in r.stdout
    data = json.loads(report.read_text())
    assert data["window"]["observed"] == pytest.approx(3, abs=0.3)   # YAML and Python: one window
    assert results["idle"]["outcome"] == "pass"
    # the saved run re-judges the Python check without sampling
    again = tmp_path / "again.json"
    r2 = vcheck("test_user.py", "--replay", str(report), "--json", str(again), cwd=tmp_path)
    assert r2.returncode == 1 and by_id(again)["test_user_time[cpu1]"]["outcome"] == "fail"


@pytest.mark.parametrize("body, words", [
    ("import no_such_module_anywhere\n", "test_bad.py:1: cannot import the check file"),
    ("from vcheck import observe\n\n@observe('cpu.usr')\ndef test_x(observed):\n    pass\n",
     "unknown metric 'cpu.usr'"),
    ("from vcheck import observe\n\n@observe('cpu.user', window='forever')\ndef test_x(observed):\n    pass\n",
     "window"),
])
def test_broken_check_files_are_usage_errors(tmp_path, body, words):
    (tmp_path / "test_bad.py").write_text(body)
    r = vcheck("test_bad.py", cwd=tmp_path)
    assert r.returncode == 4, r.stdout + r.stderr
    assert words in r.stdout + r.stderr


def test_pinned_vms_sharing_a_host_cpu_fail_the_overlap_check(qemu_vm, tmp_path):
    a, b = qemu_vm("pin-a", smp=1), qemu_vm("pin-b", smp=1)
    report = tmp_path / "r.json"

    def pin(cpu_a: int, cpu_b: int) -> dict:
        for vm, cpu in ((a, cpu_a), (b, cpu_b)):
            for tid in vm.vcpu_tids:
                os.sched_setaffinity(tid, {cpu})
        vcheck(str(CHECKS / "test_vms.py"), "--json", str(report), cwd=tmp_path)
        return by_id(report)

    together = pin(1, 1)
    assert together["test_pinned_vcpus_do_not_share_host_cpus[pin-a]"]["outcome"] == "fail"
    assert "share host CPU 1" in together["test_pinned_vcpus_do_not_share_host_cpus[pin-a]"]["reason"]
    assert together["test_vcpu_threads_are_named[pin-b]"]["outcome"] == "pass"
    apart = pin(0, 1)
    assert apart["test_pinned_vcpus_do_not_share_host_cpus[pin-a]"]["outcome"] == "pass"
    assert apart["test_pinned_vcpus_do_not_share_host_cpus[pin-b]"]["outcome"] == "pass"


def test_container_checks_look_from_inside(containerd, tmp_path):
    env = {"VCHECK_CRI_SOCKETS": str(containerd.socket), "VCHECK_RUNC_ROOT": "/nonexistent"}
    containerd.run_pod("quota", "shop", [container_spec("half", ["sleep", "3600"], cpu_quota=50000)])
    containerd.run_pod("peek", "shop", [container_spec("hostpid", ["sleep", "3600"], host_pid=True)])
    try:
        report = tmp_path / "r.json"
        r = vcheck(str(CHECKS / "test_containers.py"), "--json", str(report), env=env, cwd=tmp_path)
        assert r.returncode == 1, r.stdout + r.stderr
        res = by_id(report)
        half = res["test_workload_sees_its_cpu_limit[shop-quota-half]"]
        assert half["outcome"] == "fail" and "sees" in half["reason"] and "allows 0.5 CPU" in half["reason"]
        assert res["test_init_pid_maps_to_the_runtimes_host_pid[shop-quota-half]"]["outcome"] == "pass"
        peek = res["test_init_pid_maps_to_the_runtimes_host_pid[shop-peek-hostpid]"]
        assert peek["outcome"] == "fail" and "host's PID namespace" in peek["reason"]
        assert res["test_workload_sees_its_cpu_limit[shop-peek-hostpid]"]["outcome"] == "skip"
    finally:
        for pod in list(containerd.pods):
            containerd.remove_pod(pod)


def test_nsenter_fixture_reads_from_inside_and_cannot_write(containerd, tmp_path):
    from vcheck.nodemodel import ContainerCallError, NodeModel
    from vcheck.procfs import HostRoots

    containerd.run_pod("inside", "shop", [container_spec("look", ["sleep", "3600"])])
    try:
        os.environ["VCHECK_CRI_SOCKETS"] = str(containerd.socket)
        look = next(c for c in NodeModel(HostRoots()).containers if c.name == "look")
        status = look.run(["cat", "/proc/self/status"])
        nspid = next(ln for ln in status.stdout.splitlines() if ln.startswith("NSpid:")).split()[1:]
        # the container's PID namespace (a pid there > 1), and below it the run's own (pid 1's children)
        assert status.returncode == 0 and len(nspid) == 2 and int(nspid[0]) > 1
        hostname = look.run(["hostname"])
        assert hostname.returncode == 0 and hostname.stdout.strip()
        denied = look.run(["touch", "/etc/vcheck-was-here"])
        assert denied.returncode != 0                                  # read-only by default (nobody)
        assert not Path(f"/proc/{look.pid}/root/etc/vcheck-was-here").exists()
        with pytest.raises(TypeError):
            look.run("cat /etc/hostname")                               # never a shell string
        slow = look.run(["sleep", "5"], timeout=0.5)
        assert slow.returncode == -1 and "timed out" in slow.stderr
        # a Python callable in the same namespaces: the container's files, its PID namespace
        inside = look.call(lambda: (sorted(os.listdir("/bin")), os.getpid(), os.getuid()))
        assert "busybox" in inside[0] and inside[1] < 100 and inside[2] == 65534
        with pytest.raises(ContainerCallError, match="PermissionError"):
            look.call(lambda: open("/etc/vcheck-was-here", "w"))            # read-only by default
        with pytest.raises(ContainerCallError, match="timed out"):
            look.call(lambda: __import__("time").sleep(5), timeout=0.5)
        with pytest.raises(ContainerCallError, match="not JSON|TypeError"):
            look.call(lambda: object())
    finally:
        os.environ.pop("VCHECK_CRI_SOCKETS", None)
        for pod in list(containerd.pods):
            containerd.remove_pod(pod)


def test_a_python_check_is_waived_like_a_yaml_one(tmp_path):
    (tmp_path / "test_never.py").write_text(
        "from vcheck import observe\n\n@observe('cpu.idle', window='1s')\ndef test_never(observed):\n"
        "    assert observed.max < 0\n")
    (tmp_path / "w.yaml").write_text("waivers:\n  - check: test_never::test_never\n"
                                     "    justification: known, INC-7\n    expires: 2099-01-01\n")
    report, prom = tmp_path / "r.json", tmp_path / "r.prom"
    r = vcheck("test_never.py", "--waivers", "w.yaml", "--json", str(report), "--prom-textfile", str(prom),
               "-m", "guest", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    res = by_id(report)["test_never"]
    assert res["outcome"] == "waived" and res["layer"] == "guest"
    assert 'check="test_never"' in prom.read_text() and 'outcome="waived"' in prom.read_text()


MEAN_CHECK = '''\
from vcheck import observe


@observe("block.latency.mean", per="device", select={{"device": "{dev}"}}, window="3s")
def test_mean(observed):
    open("{out}", "w").write(repr(observed.mean))
'''


def test_python_mean_of_block_latency_mean_is_the_yaml_checks(tmp_path):
    """block.latency.mean per interval is Δms / Δios; over the window it is I/O-weighted (as
    iostat's await), in YAML and in Python alike, on real block I/O."""
    from tests.rig.io import background_writes, root_device
    dev = root_device()
    out = tmp_path / "mean.txt"
    (tmp_path / "test_mean.py").write_text(MEAN_CHECK.format(dev=dev, out=out))
    (tmp_path / "m.yaml").write_text("policy: m\ndefaults: {window: 3s, interval: 1s}\nchecks:\n"
                                     f"  - {{id: mean, metric: block.latency.mean, per: device, "
                                     f"select: {{device: {dev}}}, expect: 'mean < 1h'}}\n")
    report = tmp_path / "r.json"
    with background_writes(8):
        vcheck("test_mean.py", "m.yaml", "--json", str(report), cwd=tmp_path)
    data = json.loads(report.read_text())
    (o,) = [o for o in data["observations"] if o["metric"] == "block.latency.mean" and o["labels"] == {"device": dev}]
    assert len(o["weights"]) == len(o["values"]) >= 2, o
    weighted = sum(v * w for v, w in zip(o["values"], o["weights"])) / sum(o["weights"])
    yaml_mean = by_id(report)[f"mean[{dev}]"]["entities"][0]["series"]["mean"]
    python_mean = float(out.read_text())
    assert python_mean == pytest.approx(yaml_mean, rel=1e-9) == pytest.approx(weighted, rel=1e-9)
    assert by_id(report)[f"test_mean[{dev}]"]["entities"][0]["series"]["mean"] == pytest.approx(weighted, rel=1e-9)


def test_a_check_file_is_loaded_alone(tmp_path):
    """No __init__.py beside or above it runs, pytest_plugins and hooks are refused with FILE:LINE,
    and sys.exit() at import is a usage error, not a crash."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (tmp_path / "__init__.py").write_text(f"open({str(tmp_path / 'above-ran')!r}, 'w')\n")
    (pkg / "__init__.py").write_text(f"open({str(tmp_path / 'beside-ran')!r}, 'w')\n")
    (tmp_path / "rewrite.py").write_text(
        "import pytest\n@pytest.hookimpl(hookwrapper=True)\ndef pytest_runtest_makereport(item, call):\n"
        "    out = yield\n    out.get_result().outcome = 'passed'\n")
    (pkg / "test_plugins.py").write_text("pytest_plugins = ['rewrite']\n\ndef test_x():\n    assert False\n")
    (pkg / "test_hook.py").write_text("def test_x():\n    assert False\n\n\ndef pytest_collection_modifyitems(items):\n"
                                      "    items.clear()\n")
    (pkg / "test_exit.py").write_text("import sys\nsys.exit(0)\n")
    (pkg / "test_fine.py").write_text("def test_fine():\n    assert True\n")
    for name, line, words in (("test_plugins.py", 1, "pytest_plugins"), ("test_hook.py", 5, "pytest hook"),
                              ("test_exit.py", 2, "SystemExit")):
        r = vcheck(str(pkg / name), cwd=tmp_path, env={"PYTHONPATH": str(tmp_path)})
        assert r.returncode == 4, r.stdout + r.stderr
        assert f"{pkg / name}:{line}:" in r.stderr and words in r.stderr, r.stderr
    r = vcheck(str(pkg / "test_fine.py"), cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert not (tmp_path / "above-ran").exists() and not (tmp_path / "beside-ran").exists()


def test_a_pinned_vm_beside_a_vm_whose_vcpus_cannot_be_found_is_not_a_pass(qemu_vm, tmp_path):
    """Two VMs pinned to host CPU 1; one is unnamed and spins flat out, so its vCPU thread is
    never seen in KVM_RUN. The named VM cannot pass 'do not share host CPUs': inconclusive
    naming the other VM, or failed on the overlap where discovery caught the vCPU after all."""
    a = qemu_vm("pin-a", smp=1)
    bios = tmp_path / "spin.bin"
    image = bytearray(64 * 1024)
    image[0xFFF0:0xFFF2] = b"\xeb\xfe"      # jmp $ at the reset vector
    bios.write_bytes(bytes(image))
    hidden = subprocess.Popen([shutil.which("qemu-system-x86_64"), "-accel", "kvm", "-bios", str(bios),
                               "-name", "pin-x", "-m", "32", "-smp", "1", "-display", "none", "-monitor", "none",
                               "-nodefaults"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(1.0)
        for tid in a.vcpu_tids:
            os.sched_setaffinity(tid, {1})
        for tid in os.listdir(f"/proc/{hidden.pid}/task"):      # every thread of it: vCPU included
            os.sched_setaffinity(int(tid), {1})
        time.sleep(0.3)
        # the kernel's own view: every thread of both VMs may run on CPU 1 only
        assert all(os.sched_getaffinity(int(t)) == {1} for t in os.listdir(f"/proc/{hidden.pid}/task"))
        report = tmp_path / "r.json"
        vcheck(str(CHECKS / "test_vms.py"), "--json", str(report), cwd=tmp_path)
        results = by_id(report)
    finally:
        hidden.kill()
        hidden.wait()
    mine = results["test_pinned_vcpus_do_not_share_host_cpus[pin-a]"]
    other = results["test_pinned_vcpus_do_not_share_host_cpus[pin-x]"]
    assert mine["outcome"] != "pass", mine
    if other["outcome"] == "error":              # inconclusive: pin-x's vCPU thread was not found
        assert "inconclusive: pin-x" in other["reason"] and "0 of 1 vCPU threads found" in other["reason"], other
        assert mine["outcome"] == "error" and "inconclusive" in mine["reason"] and "pin-x" in mine["reason"], mine
    else:                                        # found after all: the overlap itself fails
        assert mine["outcome"] == "fail" and "share host CPU 1" in mine["reason"], mine
