"""Guest CPU shares and PSI on recorded /proc files (including hotplug and counters that go
backwards), and the collector run against a recorded /proc tree that changes between reads."""
import pytest

from vcheck.collectors.base import CollectContext, CollectRequest, Unavailable
from vcheck.collectors.guest import (CpuStatCollector, PressureCollector, cpu_shares, parse_pressure,
                                     parse_proc_stat)
from vcheck.observations import ObservationStore
from vcheck.procfs import HostRoots

STAT_A = """cpu  1000 0 500 8000 100 0 0 400 0 0
cpu0 500 0 250 4000 50 0 0 200 0 0
cpu1 500 0 250 4000 50 0 0 200 0 0
intr 1 2 3
"""
# +100 ticks per CPU: cpu0 50 user / 50 steal; cpu1 idle; iowait on cpu1 went backwards
STAT_B = """cpu  1050 0 500 8100 80 0 0 450 0 0
cpu0 550 0 250 4000 50 0 0 250 0 0
cpu1 500 0 250 4100 30 0 0 200 0 0
"""
# cpu2 appeared, cpu1 went away
STAT_C = """cpu  1100 0 500 8200 80 0 0 500 0 0
cpu0 600 0 250 4000 50 0 0 300 0 0
cpu2 10 0 10 10 0 0 0 0 0 0
"""


def test_shares_follow_mpstat():
    a, b = parse_proc_stat(STAT_A), parse_proc_stat(STAT_B)
    s0 = cpu_shares(a["cpu0"], b["cpu0"])
    assert s0["cpu.user"] == pytest.approx(50) and s0["cpu.steal"] == pytest.approx(50)
    s1 = cpu_shares(a["cpu1"], b["cpu1"])
    assert s1["cpu.idle"] == pytest.approx(100) and s1["cpu.iowait"] == 0  # clamped, not negative


def test_guest_time_is_not_user_time():
    a = parse_proc_stat("cpu0 100 0 0 100 0 0 0 0 0 0\n")["cpu0"]
    b = parse_proc_stat("cpu0 200 0 0 100 0 0 0 0 80 0\n")["cpu0"]
    s = cpu_shares(a, b)
    assert s["cpu.user"] == pytest.approx(20) and s["cpu.busy"] == pytest.approx(100)


def test_short_lines_of_old_kernels():
    t = parse_proc_stat("cpu0 1 2 3 4\n")["cpu0"]
    assert t.fields["steal"] == 0 and t.total == 10


def test_no_elapsed_ticks_gives_no_sample():
    a = parse_proc_stat(STAT_A)["cpu0"]
    assert cpu_shares(a, a) is None


class RecordedProc:
    """A /proc tree on disk whose files the test rewrites between reads."""

    def __init__(self, tmp_path):
        self.root = tmp_path / "proc"
        (self.root / "pressure").mkdir(parents=True)

    def write(self, name, text):
        (self.root / name).write_text(text)


def test_collector_survives_hotplug(tmp_path):
    proc = RecordedProc(tmp_path)
    proc.write("stat", STAT_A)
    store = ObservationStore()
    c = CpuStatCollector(CollectContext(HostRoots(proc=proc.root), store),
                         CollectRequest(frozenset({"cpu.steal"}), 3, 1))
    assert [d["cpu"] for d in CpuStatCollector.discover(HostRoots(proc=proc.root), "cpu.steal")] == ["0", "1"]
    c.start()
    proc.write("stat", STAT_B)
    c.sample(1.0)
    proc.write("stat", STAT_C)
    c.sample(2.0)
    by = {o.labels: o for o in store.for_metric("cpu.steal")}
    assert by[(("cpu", "0"),)].values == pytest.approx([50, 50])
    assert by[(("cpu", "1"),)].gone_at == 2.0
    assert (("cpu", "2"),) not in by                       # its first interval is left out
    # the aggregate uses only CPUs present in both readings: no jump from cpu2's counters
    assert by[()].values == pytest.approx([25, 50])
    assert any("cpu2 came online" in n for n in store.collector_notes["guest.cpu"])


def test_pressure_parsing_and_missing_files(tmp_path):
    assert parse_pressure("some avg10=0.00 avg60=0.00 avg300=0.00 total=123\n"
                          "full avg10=0.00 avg60=0.00 avg300=0.00 total=45\n") == {"some": 123, "full": 45}
    proc = RecordedProc(tmp_path)
    proc.write("pressure/cpu", "some avg10=0.00 avg60=0.00 avg300=0.00 total=100\n")
    store = ObservationStore()
    c = PressureCollector(CollectContext(HostRoots(proc=proc.root), store),
                          CollectRequest(frozenset({"psi.cpu.some", "psi.io.full"}), 3, 1))
    c.start()
    assert "CONFIG_PSI" in store.unavailable["psi.io.full"]
    assert "psi.cpu.some" not in store.unavailable


def test_pressure_with_no_psi_at_all_is_unavailable(tmp_path):
    proc = RecordedProc(tmp_path)
    c = PressureCollector(CollectContext(HostRoots(proc=proc.root), ObservationStore()),
                          CollectRequest(frozenset({"psi.cpu.some"}), 3, 1))
    with pytest.raises(Unavailable):
        c.start()
