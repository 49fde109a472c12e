"""KVM exit reason naming from the kernel's own format tables (recorded from kernel 6.18), rates
with a sample for every interval, and the blind-tracepoint rule: a VM whose exits other
tracepoints saw, or a busy one, with no kvm_exit seen is inconclusive, never a pass."""
from __future__ import annotations

from pathlib import Path

from vcheck.collectors.kvm import (ExitsSeen, IntervalRates, ReasonNames, blind_reason, parse_exit_tables,
                                   parse_userspace_table)
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


# --- rates: zero is a sample ------------------------------------------------------------
def rates_over(counts_per_interval: list[dict]) -> ObservationStore:
    store = ObservationStore()
    rates = IntervalRates(store, lambda labels: {"pid": "42"})
    for k, counts in enumerate(counts_per_interval, start=1):
        rates.sample(float(k), {("kvm.pio.rate", tuple(sorted(c.items()))): n for c, n in counts})
    return store


def test_a_late_series_is_backfilled_with_zeros_so_its_mean_is_true():
    """15 one-second intervals, exits only from the 11th on at 300/s: the mean is 100/s."""
    port = {"vm": "web1", "port": "0x10"}
    cumulative = [[] if k <= 10 else [(port, 300 * (k - 10))] for k in range(1, 16)]
    store = rates_over(cumulative)
    o = store.series("kvm.pio.rate", port)
    assert o.times == [float(k) for k in range(1, 16)] and o.spans == [1.0] * 15
    assert o.values == [0.0] * 10 + [300.0] * 5
    assert sum(v * s for v, s in zip(o.values, o.spans)) / sum(o.spans) == 100.0
    assert o.info == {"pid": "42"}


def test_a_known_series_gets_a_zero_for_an_interval_without_events():
    port = {"vm": "web1", "port": "0x10"}
    store = rates_over([[(port, 5)], [(port, 5)], [(port, 9)]])
    assert store.series("kvm.pio.rate", port).values == [5.0, 0.0, 4.0]


def test_zeros_cover_every_interval_of_the_window():
    store = ObservationStore()
    rates = IntervalRates(store, lambda labels: {})
    for t in (0.5, 1.0, 1.5):
        rates.sample(t, {})
    o = rates.zeros("kvm.mmio.rate", {"vm": "idle1"})
    assert o.values == [0.0] * 3 and o.spans == [0.5] * 3 and o.times == [0.5, 1.0, 1.5]
    assert not rates.covers("kvm.mmio.rate", "idle1")


# --- blindness: exits seen elsewhere prove kvm_exit blind ----------------------------------
def test_port_io_exits_of_an_idle_vm_prove_kvm_exit_blind():
    why = blind_reason("web1", 7, "qemu", 0.4, ExitsSeen(userspace=1000, pio=1000), any_exit_event=False)
    assert why is not None and why.startswith("1000 userspace/1000 pio exits seen but no kvm_exit for web1")
    assert "0% CPU" in why


def test_a_busy_vm_without_any_exit_is_blind_by_cpu():
    why = blind_reason("spin", 7, "qemu", 99.0, ExitsSeen(), any_exit_event=True)
    assert why is not None and "saw no event for this VM" in why and "99% CPU" in why


def test_an_idle_vm_without_exits_is_not_blind():
    assert blind_reason("idle1", 7, "qemu", 0.2, ExitsSeen(), any_exit_event=False) is None
    assert blind_reason("new1", 7, "qemu", None, ExitsSeen(), any_exit_event=False) is None
