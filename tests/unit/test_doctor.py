"""The doctor walks the catalogue: what each collector declares (NEEDS, diagnose) is what it checks."""
from __future__ import annotations

from vcheck.collectors.base import Collector, Needs
from vcheck.doctor import collector_rows, _programs
from vcheck.model import MetricSpec
from vcheck.probes import Attach
from vcheck.procfs import HostRoots

SPEC = MetricSpec("x.y", "guest", "percent", "series", (), "node", "max", "test", "test")


class Reads(Collector):
    name = "test.reads"
    METRICS = (SPEC,)
    NEEDS = Needs(files=(("proc", "present", "a present file"), ("proc", "absent", "an absent file")))

    @classmethod
    def diagnose(cls, roots):
        return [("discovery", "n/a", "nothing found")]

    def sample(self, t: float) -> None:  # pragma: no cover - never run
        pass


class Traces(Reads):
    name = "test.traces"
    NEEDS = Needs(program=("p.c", (Attach("sched", "sched_switch", "vchk_x"),), ("-DX",)), what="p (BPF)")


def test_rows_come_from_the_declarations(tmp_path):
    (tmp_path / "present").write_text("1")
    rows = collector_rows(HostRoots(proc=tmp_path), [Reads])
    assert [(r.what, r.status) for r in rows] == [("a present file", "ok"), ("an absent file", "no"),
                                                  ("discovery", "n/a")]
    assert "No such file" in rows[1].detail
    assert _programs([Reads, Traces]) == [("guest", "p (BPF)", "p.c", Traces.NEEDS.program[1], ("-DX",))]


def test_every_shipped_collector_declares_what_it_needs():
    from vcheck.catalog import Catalog

    for cls in Catalog().collectors.values():
        # a bound classmethod is a new object at each access: compare the functions behind them
        own_diagnose = cls.diagnose.__func__ is not Collector.diagnose.__func__
        assert cls.NEEDS.files or cls.NEEDS.program or own_diagnose, cls.name
