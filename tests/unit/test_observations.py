"""The store's index: an item's observations found by metric and label pair are exactly those a
scan of every observation finds, in the order they were filed, also after more are filed."""
from __future__ import annotations

import random

from vcheck.observations import Observation, ObservationStore, labels_of


def _scan(store: ObservationStore, metric: str, labels: dict[str, str] | None) -> list[Observation]:
    want = set(labels_of(labels or {}))
    return [o for o in store.all() if o.metric == metric and want <= set(o.labels)]


def test_matching_is_the_scan():
    rng = random.Random(7)
    store = ObservationStore()
    asks = []
    for round_ in range(3):
        for _ in range(300):
            labels = {k: str(rng.randrange(4)) for k in rng.sample(["vm", "vcpu", "cpu", "reason"], rng.randrange(3))}
            metric = rng.choice(["a", "b"])
            store.add_sample(metric, labels, 1.0, 1.0, 1.0)
            asks.append((metric, labels))
        asks += [("a", None), ("b", {}), ("c", {"vm": "1"}), ("a", {"vm": "9"})]
        for metric, labels in asks:     # the index built, then new series filed: rebuilt
            assert store.matching(metric, labels) == _scan(store, metric, labels), (round_, metric, labels)
        assert store.for_metric("a") == _scan(store, "a", None)


def test_put_replaces_and_mark_gone_reads_the_index():
    store = ObservationStore()
    store.add_sample("m", {"vm": "web1", "vcpu": "0"}, 1.0, 1.0, 1.0)
    store.add_sample("n", {"vm": "web1"}, 1.0, 1.0, 1.0)
    store.add_sample("m", {"vm": "db1", "vcpu": "0"}, 1.0, 1.0, 1.0)
    fresh = Observation("m", labels_of({"vm": "web1", "vcpu": "0"}))
    store.put(fresh)
    assert store.matching("m", {"vm": "web1"}) == [fresh]
    store.mark_gone({"vm": "web1"}, 2.0, "stopped")
    assert [o.gone_at for o in store.all()] == [2.0, 2.0, None]
