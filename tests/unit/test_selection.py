"""The one selection rule, used both when items are made and when an item picks its
observations: the same entity is in or out at both ends."""
from __future__ import annotations

from vcheck.catalog import Catalog
from vcheck.observations import Observation, labels_of
from vcheck.policy import load_policy_bytes
from vcheck.selection import item_entities, observations_for, selected, tree_depth

CATALOG = Catalog()


def check(body: str):
    return load_policy_bytes(f"policy: p\nchecks:\n  - {body}\n".encode(), "p.yaml", CATALOG).checks[0]


def obs(metric: str, **labels: str) -> Observation:
    return Observation(metric, labels_of(labels))


def test_a_blind_vm_stays_in_whatever_the_reason_select():
    c = check("{id: x, metric: kvm.exit.latency, per: [vm, reason], select: {reason: '!HLT'}, expect: 'p99 < 1ms'}")
    blind = obs("kvm.exit.latency", vm="web1")              # no reason: kvm_exit never fired
    hlt, io = obs("kvm.exit.latency", vm="web1", reason="HLT"), obs("kvm.exit.latency", vm="web1", reason="IO")
    assert item_entities(c, [{"vm": "web1"}]) == [{"vm": "web1"}]
    assert observations_for(c, [blind, hlt, io], {"vm": "web1"}) == [blind, io]
    assert selected(c, {"vm": "web1"}) and not selected(c, {"vm": "web1", "reason": "HLT"})


def test_a_missing_discoverable_label_is_no_match_at_both_ends():
    c = check("{id: x, metric: container.cpu, per: container, select: {namespace: prod}, expect: '< 90%'}")
    entity = {"container": "a", "pod": "p"}                  # no namespace known
    assert item_entities(c, [entity]) == [None]               # no item for it ...
    o = obs("container.cpu", container="a", pod="p")
    assert observations_for(c, [o], None) == []               # ... and the judge does not pick it
    neg = check("{id: y, metric: container.cpu, per: container, select: {namespace: '!kube-system'}, expect: '< 90%'}")
    assert selected(neg, entity)                              # a negation matches an absent value


def test_node_wide_total_is_not_an_entity():
    c = check("{id: x, metric: cpu.steal, per: cpu, expect: '< 10%'}")
    total, cpu3 = obs("cpu.steal"), obs("cpu.steal", cpu="3")
    assert observations_for(c, [total, cpu3], {"cpu": "3"}) == [cpu3]
    node = check("{id: y, metric: cpu.steal, expect: '< 10%'}")
    assert observations_for(node, [total, cpu3], None) == [total]


def test_cgroup_items_stop_at_a_depth_a_glob_can_deepen():
    flat = check("{id: x, metric: cgroup.cpu, per: cgroup, expect: '< 90%'}")
    deep = check("{id: y, metric: cgroup.cpu, per: cgroup, select: {cgroup: '/machine.slice/*/*'}, expect: '< 90%'}")
    found = [{"cgroup": p} for p in ("/", "/machine.slice", "/machine.slice/vm1.scope",
                                     "/machine.slice/vm1.scope/vcpu0")]
    assert [e["cgroup"] for e in item_entities(flat, found)] == ["/", "/machine.slice", "/machine.slice/vm1.scope"]
    assert [e["cgroup"] for e in item_entities(deep, found)] == ["/machine.slice/vm1.scope/vcpu0"]
    assert tree_depth("cgroup", [deep.select]) == 3
