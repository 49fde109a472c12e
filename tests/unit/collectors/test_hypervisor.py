"""VM naming from VMM command lines, /proc parsing on recorded lines, and redaction of the
command lines that become evidence."""
from __future__ import annotations

import pytest

from vcheck.collectors.hypervisor import (PROCESS_FILES, VCPU_FILES, TaskFiles, files_needed, parse_rss,
                                          parse_schedstat, parse_stat, parse_switches, vm_identity)
from vcheck.evidence import redact


@pytest.mark.parametrize("argv, name, vmm, uuid", [
    (["/usr/bin/qemu-system-x86_64", "-accel", "kvm", "-name", "guest=web1,debug-threads=on"], "web1", "qemu", ""),
    (["qemu-system-x86_64", "-name", "db1"], "db1", "qemu", ""),
    (["qemu-kvm", "-name", "guest=a,,b,debug-threads=on"], "a,b", "qemu", ""),       # ',,' escapes ','
    (["/usr/bin/qemu-system-x86_64", "-name", "guest=instance-0001,debug-threads=on",
      "-uuid", "5f1d3c6e-1111-2222-3333-444455556666"], "instance-0001", "qemu",
     "5f1d3c6e-1111-2222-3333-444455556666"),                                       # libvirt
    (["firecracker", "--id", "fc-42", "--api-sock", "/run/fc.sock"], "fc-42", "firecracker", ""),
    (["/usr/bin/cloud-hypervisor", "--kernel", "vmlinux"], "cloud-hypervisor-77", "cloud-hypervisor", ""),
    (["./tinykvm"], "tinykvm-77", "tinykvm", ""),
])
def test_vm_identity(argv, name, vmm, uuid):
    assert vm_identity(argv, argv[0].rsplit("/", 1)[-1][:15], 77)[:3] == (name, vmm, uuid)


def test_smbios_serial_is_what_the_guest_will_read():
    argv = ["qemu-system-x86_64", "-name", "guest=g1", "-uuid", "U-1", "-smbios", "type=1,serial=S-9,product=x"]
    assert vm_identity(argv, "qemu-system-x86", 5) == ("g1", "qemu", "U-1", "S-9")


def test_stat_schedstat_status_parsing():
    # recorded from a qemu vCPU thread: comm with a space and a slash, 52 fields
    stat = ("4242 (CPU 0/KVM) R 4240 4240 1 0 -1 4210752 63 0 0 0 120 35 0 0 20 0 3 0 1000 "
            "0 0 18446744073709551615 0 0 0 0 0 0 0 4096 0 0 0 0 -1 1 0 0 0 90 0 0 0 0 0 0 0 0 0")
    assert parse_stat(stat) == (155, 90)
    assert parse_schedstat("2035717000 512000000 1803\n") == 512000000
    status = "Name:\tCPU 0/KVM\nVmRSS:\t   40960 kB\nvoluntary_ctxt_switches:\t10\nnonvoluntary_ctxt_switches:\t5\n"
    assert parse_switches(status) == 15 and parse_rss(status) == 40960 * 1024


@pytest.mark.parametrize("want, process, vcpu", [
    ({"vcpu.cpu"}, set(), {"stat"}),
    ({"vcpu.cpu", "vcpu.guest", "vm.cpu"}, {"stat"}, {"stat"}),
    ({"vcpu.run_delay"}, set(), {"schedstat"}),
    ({"vcpu.ctxsw.rate", "vm.memory.rss"}, {"status"}, {"status"}),
    ({"vm.vcpus"}, set(), set()),
])
def test_a_sample_reads_only_the_files_its_figures_need(want, process, vcpu):
    assert files_needed(frozenset(want), PROCESS_FILES) == process
    assert files_needed(frozenset(want), VCPU_FILES) == vcpu


def test_task_files_read_what_they_hold_and_nothing_else():
    files = {"/p/1/task/2/stat": ("4242 (CPU 0/KVM) R 4240 4240 1 0 -1 4210752 63 0 0 0 120 35 0 0 20 0 3 0 1000 "
                                  "0 0 18446744073709551615 0 0 0 0 0 0 0 4096 0 0 0 0 -1 1 0 0 0 90 0 0 0 0 0 0 0 0 0"),
             "/p/1/task/2/schedstat": "2035717000 512000000 1803\n",
             "/p/1/task/2/status": "Name:\tCPU 0/KVM\nVmRSS:\t   40960 kB\nvoluntary_ctxt_switches:\t10\n"
                                   "nonvoluntary_ctxt_switches:\t5\n"}
    read: list[str] = []

    def reader(path: str) -> str:
        read.append(path)
        return files[path]

    only_stat = TaskFiles.of("/p/1/task/2", frozenset({"stat"})).read(reader)
    assert read == ["/p/1/task/2/stat"] and (only_stat.cpu_ticks, only_stat.guest_ticks) == (155, 90)
    assert (only_stat.run_delay_ns, only_stat.switches, only_stat.rss) == (0, 0, 0)
    read.clear()
    every = TaskFiles.of("/p/1/task/2", frozenset({"stat", "status", "schedstat"})).read(reader)
    assert sorted(read) == sorted(files)
    assert (every.run_delay_ns, every.switches, every.rss) == (512000000, 15, 40960 * 1024)


@pytest.mark.parametrize("text, secret", [
    ("qemu -object secret,id=sec0,data=c2VjcmV0LXBhc3N3b3Jk,format=base64", "c2VjcmV0LXBhc3N3b3Jk"),
    ("qemu -drive file=rbd:pool/img:id=admin:key=AQBsecretkey==,format=raw", "AQBsecretkey=="),
    ("qemu -vnc :1,password=hunter2", "hunter2"),
    ("qemu -drive file=https://user:s3cr3t@example.com/disk.img", "s3cr3t"),
    ("firecracker --token abcdef123", "abcdef123"),
    ("curl -H 'Authorization: Bearer eyJhbGciOi.x.y'", "eyJhbGciOi.x.y"),
])
def test_redaction_removes_secrets_and_keeps_the_rest(text, secret):
    out = redact(text)
    assert secret not in out and "<redacted>" in out
    assert out.split()[0] == text.split()[0]
