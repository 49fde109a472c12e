"""KVM exit reason naming from the kernel's own format tables (recorded from kernel 6.18), and
the blind-tracepoint rule: a busy VM with no exit seen is inconclusive, never a pass."""
from __future__ import annotations

from pathlib import Path

from vcheck.collectors.kvm import ReasonNames, parse_exit_tables, parse_userspace_table
from vcheck.histogram import Histogram
from vcheck.judge import judge
from vcheck.observations import ObservationStore
from tests.unit.test_judge import check

DATA = Path(__file__).resolve().parents[2] / "data"


def names() -> ReasonNames:
    vmx, svm = parse_exit_tables((DATA / "kvm_exit.format").read_text())
    return ReasonNames(vmx, svm, parse_userspace_table((DATA / "kvm_userspace_exit.format").read_text()))


def test_vmx_and_svm_tables_are_told_apart_by_isa():
    n = names()
    # recorded kvm_exit events: isa 1 reason 48 / 30 / 12 on Intel; isa 2 reason 0x7c / 0x78 on AMD
    assert n.exit_reason(1, 48) == "EPT_VIOLATION"
    assert n.exit_reason(1, 30) == "IO_INSTRUCTION"
    assert n.exit_reason(1, 12) == "HLT"
    assert n.exit_reason(2, 0x7C) == "msr"
    assert n.exit_reason(2, 0x78) == "hlt"
    assert n.exit_reason(2, 0xFFFFFFFF) == "invalid_guest_state"   # SVM's -1


def test_unknown_codes_keep_their_number():
    n = names()
    assert n.exit_reason(1, 0x7FFF) == "VMX_0x7fff"
    assert n.exit_reason(2, 0x7FFF) == "SVM_0x7fff"


def test_userspace_reasons_and_errors():
    n = names()
    assert n.userspace_reason(2) == "KVM_EXIT_IO"
    assert n.userspace_reason(6) == "KVM_EXIT_MMIO"
    assert n.userspace_reason(1004) == "restart"          # KVM_RUN interrupted by a signal (EINTR)
    assert n.userspace_reason(1011) == "error_errno11"


def test_missing_format_file_gives_numbered_names():
    n = ReasonNames({}, {}, {})
    assert n.exit_reason(1, 48) == "VMX_0x30" and n.userspace_reason(2) == "KVM_EXIT_2"


def test_blind_distribution_is_inconclusive_not_a_pass():
    c = check("metric: kvm.exit.latency\nexpect: 'count(> 1ms) <= 0'\nper: vm\nwindow: 2s")
    s = ObservationStore()
    s.window.duration = 2.0
    o = s.set_histogram("kvm.exit.latency", {"vm": "web1"}, Histogram(scale=1e-9))
    o.blind = "kvm:kvm_exit saw no event while web1 used 95% CPU"
    v = judge(c, s, {"vm": "web1"}, 2.0)
    assert v.outcome == "error" and "saw no event" in v.reason


def test_blind_series_is_inconclusive_but_a_violation_still_fails():
    c = check("metric: kvm.exit.rate\nexpect: '< 1000'\nper: vm\nwindow: 2s")
    s = ObservationStore()
    s.window.duration = 2.0
    o = s.series("kvm.exit.rate", {"vm": "web1"})
    o.blind = "not traced here"
    assert judge(c, s, {"vm": "web1"}, 2.0).outcome == "error"
    s.add_sample("kvm.exit.rate", {"vm": "web1", "reason": "HLT"}, 1.0, 5000.0, 1.0)
    s.add_sample("kvm.exit.rate", {"vm": "web1", "reason": "HLT"}, 2.0, 5000.0, 1.0)
    assert judge(c, s, {"vm": "web1"}, 2.0).outcome == "fail"
