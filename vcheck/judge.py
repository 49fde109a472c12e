"""Judging a check on what the session observed: the only place verdicts are made.

Items never sample. For one item (a check and, with ``per:``, one entity) this module picks
the observations that belong to it, evaluates the assertion AST on each (or on a merged
distribution), applies ``for:`` (Prometheus semantics on the sampled series) and turns missing,
vanished or too-thin data into skip / fail / inconclusive as the check's ``on_missing`` says.
"""
from __future__ import annotations

import functools
import math
import operator
from collections import deque
from dataclasses import dataclass
from typing import Mapping

from . import expr as E
from .evidence import EntityEvidence, Measurement, Verdict, merge_culprits
from .histogram import RELATIVE_ERROR, Histogram
from .observations import Observation, ObservationStore
from .model import EntityOutcome, Kind, OnMissing, Outcome
from .policy import Check
from .selection import entity_name, entity_of, observations_for
from .units import COUNT, TIME, format_value

MIN_COVERAGE = 0.5   # a series that covers less than half its window is inconclusive
FOR_TOLERANCE = 0.25  # of an interval: sampling jitter allowed when measuring a stretch


# --- values an assertion can ask for -----------------------------------------------------

@dataclass
class _Value:
    value: float | None
    note: str = ""


class SeriesView:
    unseen = 0   # a series has no kernel count to hold its samples against

    def unseen_beyond(self, op: str, threshold: float) -> int:
        return 0

    def __init__(self, obs: Observation, window: float, slack: float = 0.0):
        """Samples taken within `window` (+ `slack` for timer jitter on the last one)."""
        weighted = len(obs.weights) == len(obs.values)
        if not obs.times or max(obs.times) <= window + slack:     # all of it (the common case): no copy
            self.times, self.values, self.spans = obs.times, obs.values, obs.spans
            self.weights = obs.weights if weighted else obs.spans
            return
        keep = [i for i, t in enumerate(obs.times) if t <= window + slack]
        self.times = [obs.times[i] for i in keep]
        self.values = [obs.values[i] for i in keep]
        self.spans = [obs.spans[i] for i in keep]
        self.weights = [obs.weights[i] for i in keep] if weighted else self.spans

    def stat(self, name: str, window: float) -> _Value:
        v = self.values
        if not v:
            return _Value(None)
        if name == "min":
            return _Value(min(v))
        if name == "max":
            return _Value(max(v))
        if name == "last":
            return _Value(v[-1])
        if name == "sum":
            return _Value(sum(v))
        if name == "count":
            return _Value(float(len(v)))
        if name == "mean":
            total = sum(self.weights)
            return _Value(sum(map(operator.mul, v, self.weights)) / total if total > 0 else sum(v) / len(v))
        if name in E.PERCENTILES:
            ordered = sorted(v)
            rank = max(1, math.ceil(E.PERCENTILES[name] * len(ordered)))
            return _Value(ordered[rank - 1], f"exact, over {len(v)} samples")
        raise ValueError(name)

    def count(self, op: str, threshold: float) -> _Value:
        return _Value(float(sum(1 for x in self.values if E.OPS[op](x, threshold))), "samples")


class DistributionView:
    def __init__(self, hist: Histogram, unseen: int = 0, unseen_seconds: float | None = None):
        """`unseen`: events the kernel counted that the probe never timed, which together took
        at most `unseen_seconds` (None: no bound) (Observation.unseen, .unseen_seconds)."""
        self.hist = hist
        self.unseen = unseen
        self.budget = math.inf if unseen_seconds is None else unseen_seconds

    def stat(self, name: str, window: float) -> _Value:
        h, u = self.hist, self.unseen
        if name in ("count", "rate"):
            n = h.count + u   # the kernel's count is exact even where the probe missed some
            note = f"{h.count} timed + {u} counted by the kernel, never timed" if u else ""
            if name == "count":
                return _Value(float(n), note)
            return _Value(n / window if window > 0 else None, note)
        if not h.count:
            return _Value(None, f"{u} events counted by the kernel, none timed" if u else "no events in the window")
        if name == "sum":
            return _Value(h.sum * h.scale)
        if name == "mean":
            return _Value(h.mean(), "exact (in-kernel sum / count)")
        est = (h.min() if name == "min" else h.max() if name == "max" else
               h.percentile(E.PERCENTILES[name]) if name in E.PERCENTILES else None)
        if est is None:
            raise ValueError(name)
        return _Value(est.value, "" if est.low == est.high else
                      f"bucket [{_fmt(est.low)}, {_fmt(est.high)}), error <= {RELATIVE_ERROR:.2%}")

    def bounds(self, name: str) -> tuple[float, float] | None:
        """Where `name` may lie once the unseen events are counted in, whatever they took (values
        are durations, so >= 0); None when nothing was unseen or the stat does not depend on it."""
        h, u, budget = self.hist, self.unseen, self.budget
        if not u or name in ("count", "rate"):
            return None
        timed_max = h.max().value if h.count else 0.0
        top = max(timed_max, budget)   # one unseen event may have taken the whole budget
        total = h.sum * h.scale
        if name == "max":
            return (timed_max, top)
        if name == "min":
            return (0.0, h.min().value if h.count else budget / u)
        if name == "sum":
            return (total, total + budget)
        if name == "mean":
            return (total / (h.count + u), (total + budget) / (h.count + u))
        if name in E.PERCENTILES:
            rank = max(1, math.ceil(E.PERCENTILES[name] * (h.count + u)))
            low = h.at_rank(rank - u)     # every unseen event below it
            high = h.at_rank(rank)        # every unseen event above it
            return (low.value if low else 0.0, min(high.value, top) if high else top)
        raise ValueError(name)

    def unseen_beyond(self, op: str, threshold: float) -> int:
        """How many unseen events may lie beyond `threshold`: all of them below it, and above
        it only as many as the time budget pays for."""
        if op in ("<", "<=") or threshold <= 0 or math.isinf(self.budget):
            return self.unseen
        return min(self.unseen, int(self.budget // threshold))

    def straddle(self, name: str, threshold: float) -> tuple[float, float] | None:
        if name not in E.PERCENTILES:
            return None
        est = self.hist.percentile(E.PERCENTILES[name])
        return (est.low, est.high) if est and est.straddles(threshold) else None

    def count(self, op: str, threshold: float) -> _Value:
        certain, possible = self.hist.count_beyond(op, threshold)
        if certain == possible:
            return _Value(float(certain))
        return _Value(float(certain), f"{possible - certain} more lie in the bucket that holds the "
                                      f"threshold; counted {certain} certain, up to {possible} possible")


def _fmt(v: float) -> str:
    """A bucket bound as the terminal writes a duration (every distribution vcheck keeps is one)."""
    return format_value(v, TIME)


# --- evaluating the AST -----------------------------------------------------------------

def evaluate(e: E.Expr, view: SeriesView | DistributionView, natural: str, dimension: str,
             window: float, out: list[Measurement]) -> bool | None:
    """True/False, or None when a needed value is missing. Appends one Measurement per leaf."""
    if isinstance(e, E.And):
        a = evaluate(e.left, view, natural, dimension, window, out)
        b = evaluate(e.right, view, natural, dimension, window, out)
        return False if a is False or b is False else (None if a is None or b is None else True)
    if isinstance(e, E.Or):
        a = evaluate(e.left, view, natural, dimension, window, out)
        b = evaluate(e.right, view, natural, dimension, window, out)
        return True if a is True or b is True else (None if a is None or b is None else False)
    if isinstance(e, E.Outliers):
        threshold = e.threshold.base_value
        got = view.count(e.inner_op, threshold)
        ok = E.OPS[e.op](got.value, e.limit) if got.value is not None else None
        note = got.note
        extra = view.unseen_beyond(e.inner_op, threshold) if view.unseen else 0
        if ok is not None and extra and E.OPS[e.op](got.value + extra, e.limit) != ok:
            ok, note = None, (f"{view.unseen} events were counted by the kernel but never timed: with them "
                              f"the count lies in [{got.value:g}, {got.value + extra:g}], on both sides "
                              f"of {e.limit:g}")
        out.append(Measurement(str(e), f"count({e.inner_op} {e.threshold})", got.value,
                               format_value(got.value, COUNT), f"{e.op} {e.limit:g}", ok, note,
                               float(e.limit)))
        return ok
    stat = e.stat or natural
    threshold = e.value.base_value
    got = view.stat(stat, window)
    dim = COUNT if stat == "count" else ("rate" if stat == "rate" else dimension)
    ok = E.OPS[e.op](got.value, threshold) if got.value is not None else None
    note = got.note
    if isinstance(view, DistributionView) and ok is not None:
        s = view.straddle(stat, threshold)
        if s:
            note = (f"the threshold lies inside the bucket [{format_value(s[0], dim)}, {format_value(s[1], dim)}) "
                    f"that holds {stat}: the verdict is within the histogram's {RELATIVE_ERROR:.2%} error")
        b = view.bounds(stat)
        if b is not None:
            low, high = (E.OPS[e.op](x, threshold) for x in b)
            if low != high:
                ok = None
                note = (f"{view.unseen} events were counted by the kernel but never timed: with them "
                        f"{stat} lies in [{format_value(b[0], dim)}, "
                        f"{'unbounded' if math.isinf(b[1]) else format_value(b[1], dim)}], on both sides "
                        f"of {format_value(threshold, dim)}")
    out.append(Measurement(str(e), stat, got.value, format_value(got.value, dim),
                           _threshold_text(e.op, threshold, dim), ok, note, threshold))
    return ok


@functools.lru_cache(maxsize=1024)
def _threshold_text(op: str, threshold: float, dim: str) -> str:
    """'< 90.00%': the same for every entity a check judges (100,000 of them on a dense node)."""
    return f"{op} {format_value(threshold, dim)}"


def _sample_ok(e: E.Expr, x: float) -> bool:
    """Per-sample truth of an expression made of plain comparisons (for: semantics)."""
    if isinstance(e, E.And):
        return _sample_ok(e.left, x) and _sample_ok(e.right, x)
    if isinstance(e, E.Or):
        return _sample_ok(e.left, x) or _sample_ok(e.right, x)
    assert isinstance(e, E.Comparison)
    return E.OPS[e.op](x, e.value.base_value)


def longest_violation(e: E.Expr, times: list[float], values: list[float], spans: list[float]) -> dict | None:
    """The longest run of consecutive samples that violate the expression."""
    best = None
    run_start = None
    run_len = 0.0
    run_n = 0
    for t, x, s in zip(times, values, spans):
        if not _sample_ok(e, x):
            if run_start is None:
                run_start, run_len, run_n = t - s, 0.0, 0
            run_len += s
            run_n += 1
            if best is None or run_len > best["duration"]:
                best = {"start": run_start, "end": t, "duration": run_len, "samples": run_n}
        else:
            run_start = None
    return best


def sustained_level(op: str, times: list[float], values: list[float], spans: list[float],
                    for_: float, slack: float) -> float | None:
    """The level the series held for `for_` seconds on end, on the side the comparison forbids:
    for `< X` the highest L such that every sample of some for_-long stretch was >= L (for `> X`
    the lowest L with every sample <= L). The check fails exactly when that level breaks the
    comparison, so it is the figure a dashboard plots against the threshold. None: no stretch
    of samples lasts for_ seconds.

    Each stretch starts at a sample i and ends at the first j whose spans from i add up to
    for_ - slack; j only moves forward as i does, so one pass with a deque of the stretch's
    candidates for its extreme value finds them all (linear in the samples, not samples x the
    samples in a stretch)."""
    upper = op in ("<", "<=")
    n = len(values)
    target = for_ - slack
    prefix = [0.0]
    for s in spans:
        prefix.append(prefix[-1] + s)
    best = None
    window: deque[int] = deque()     # indexes in [i, j], their values monotonic: window[0] is the extreme
    j = -1                            # the last index pushed
    for i in range(n):
        while window and window[0] < i:
            window.popleft()
        end = _stretch_end(spans, prefix, i, max(j, i), target)
        if end is None:
            break                     # a later start covers even less
        while j < end:
            j += 1
            v = values[j]
            while window and (values[window[-1]] >= v if upper else values[window[-1]] <= v):
                window.pop()
            window.append(j)
        level = values[window[0]]
        if best is None or (level > best if upper else level < best):
            best = level
    return best


def _stretch_end(spans: list[float], prefix: list[float], i: int, start: int, target: float) -> int | None:
    """The first j >= start whose spans i..j add up to `target`: from the prefix sums, and where
    those are too close to call, summed sample by sample as a stretch was always measured."""
    tol = 1e-9 * max(1.0, abs(target))
    for j in range(start, len(spans)):
        covered = prefix[j + 1] - prefix[i]
        if covered >= target + tol:
            return j
        if covered > target - tol:
            exact = 0.0
            for k in range(i, j + 1):
                exact += spans[k]
            if exact >= target:
                return j
    return None


# --- one item ----------------------------------------------------------------------------

def judge(check: Check, store: ObservationStore, item_labels: Mapping[str, str] | None,
          observed: float) -> Verdict:
    """Verdict for one item. `observed` is how long the session actually sampled."""
    spec = check.metric
    window = min(check.window, observed) if observed else check.window
    obs = observations_for(check, store, item_labels)
    entities: list[EntityEvidence] = []
    if spec.kind == Kind.DISTRIBUTION:
        groups: dict[tuple, list[Observation]] = {}
        for o in obs:
            key = tuple((k, o.label_dict.get(k, "")) for k in (check.per or ()))
            groups.setdefault(key, []).append(o)
        for key, members in groups.items():
            entities.append(_judge_distribution(check, dict(key), members, window))
    else:
        for o in obs:
            entities.append(_judge_series(check, o, window))

    v = Verdict(outcome=Outcome.PASS, reason="", entities=entities, window=check.window, dimension=spec.dimension,
                expect=check.expect_text, metric=spec.name, for_=check.for_)
    missing_reason = store.unavailable.get(spec.name, "")
    if not entities:
        where = entity_name(item_labels) if item_labels else "this node"
        why = missing_reason or f"no {spec.entity} data for {where}"
        return _apply_missing(v, check, why)
    outcomes = {e.outcome for e in entities}
    if EntityOutcome.FAIL in outcomes:
        bad = [e.entity for e in entities if e.outcome == EntityOutcome.FAIL]
        v.outcome, v.reason = Outcome.FAIL, f"violated by {', '.join(bad[:5])}" + (" ..." if len(bad) > 5 else "")
    elif EntityOutcome.INCONCLUSIVE in outcomes:
        why = next(e.reason for e in entities if e.outcome == EntityOutcome.INCONCLUSIVE)
        v.outcome, v.reason = Outcome.ERROR, f"inconclusive: {why}"
    elif outcomes == {EntityOutcome.MISSING}:
        return _apply_missing(v, check, entities[0].reason)
    return v


def _apply_missing(v: Verdict, check: Check, why: str) -> Verdict:
    v.reason = f"no data: {why}"
    v.outcome = Outcome(OnMissing(check.on_missing).value)
    if check.on_missing == OnMissing.PASS:
        v.reason += " (on_missing: pass)"
    return v


def _expected(check: Check, window: float) -> int:
    return max(1, int(round(window / check.interval)))


def _judge_series(check: Check, o: Observation, window: float) -> EntityEvidence:
    spec = check.metric
    view = SeriesView(o, window, slack=check.interval / 2)
    labels = o.label_dict
    ev = EntityEvidence(entity=entity_of(labels, spec.labels), labels=labels, info=dict(o.info),
                        outcome=EntityOutcome.PASS, samples=len(view.values), expected_samples=_expected(check, window),
                        observed_seconds=sum(view.spans), notes=list(o.notes), culprits=list(o.culprits),
                        events=list(o.events))   # a count's evidence: what was counted (net.drops)
    if view.values:
        ev.series = {"min": min(view.values), "max": max(view.values),
                     "mean": view.stat("mean", window).value}
    if check.for_:
        lv = longest_violation(check.expect, view.times, view.values, view.spans)
        if ev.series is not None:
            ev.series["longest_violation"] = lv
        sustained = lv is not None and lv["duration"] >= check.for_ - FOR_TOLERANCE * check.interval
        ev.measurements.append(Measurement(
            f"{check.expect_text} for {check.for_:g}s", "longest violation",
            lv["duration"] if lv else 0.0, f"{lv['duration']:.1f}s" if lv else "0s",
            f"< {check.for_:g}s", not sustained, threshold=check.for_))
        leaf = check.expect
        if isinstance(leaf, E.Comparison) and leaf.stat is None and leaf.op in ("<", "<=", ">", ">="):
            level = sustained_level(leaf.op, view.times, view.values, view.spans, check.for_,
                                    FOR_TOLERANCE * check.interval)
            if level is not None:
                ev.measurements.append(Measurement(
                    f"{check.expect_text} for {check.for_:g}s", f"sustained {check.for_:g}s", level,
                    format_value(level, spec.dimension), f"{leaf.op} {leaf.value}", not sustained,
                    note="the level held for the whole for: stretch", threshold=leaf.value.base_value))
        if sustained:
            ev.outcome = EntityOutcome.FAIL
        elif o.gone_at is not None:
            ev.outcome, ev.reason = EntityOutcome.MISSING, f"gone at +{o.gone_at:.1f}s ({o.gone_reason})"
        elif ev.observed_seconds < check.for_ - FOR_TOLERANCE * check.interval:
            ev.outcome = EntityOutcome.INCONCLUSIVE
            ev.reason = (f"for: {check.for_:g}s needs {check.for_:g}s of samples, "
                         f"{ev.entity} has {ev.observed_seconds:.1f}s")
        return ev
    ok = evaluate(check.expect, view, spec.natural_stat, spec.dimension, window, ev.measurements)
    if ok is False:
        ev.outcome = EntityOutcome.FAIL
    elif o.blind:
        ev.outcome, ev.reason = EntityOutcome.INCONCLUSIVE, o.blind
    elif o.gone_at is not None:
        ev.outcome, ev.reason = EntityOutcome.MISSING, f"gone at +{o.gone_at:.1f}s ({o.gone_reason})"
    elif not o.values and o.notes:
        # the source holds no figure for this entity and said why ("not in the memory hierarchy")
        ev.outcome, ev.reason = EntityOutcome.MISSING, o.notes[0]
    elif not spec.sparse and ev.samples < max(1, math.ceil(MIN_COVERAGE * ev.expected_samples)):
        ev.outcome = EntityOutcome.INCONCLUSIVE
        ev.reason = f"{ev.entity}: {ev.samples} of {ev.expected_samples} expected samples"
    elif ok is None:
        ev.outcome, ev.reason = EntityOutcome.MISSING, next(iter(o.notes), "no values")
    return ev


def _judge_distribution(check: Check, key: dict[str, str], members: list[Observation],
                        window: float) -> EntityEvidence:
    spec = check.metric
    hist: Histogram | None = None
    events: list[dict] = []
    info: dict[str, str] = {}
    notes: list[str] = []
    gone = [o for o in members if o.gone_at is not None]
    for o in members:
        if o.histogram is not None:
            hist = o.histogram if hist is None else hist.merge(o.histogram)
        events.extend(o.events)
        info.update(o.info)
        notes.extend(n for n in o.notes if n not in notes)
    labels = key or (members[0].label_dict if len(members) == 1 else {})
    name = entity_name(labels) if labels else "node"
    ev = EntityEvidence(entity=name, labels=labels, info=info, outcome=EntityOutcome.PASS, histogram=hist,
                        samples=hist.count if hist else 0, observed_seconds=window, notes=notes,
                        culprits=merge_culprits([o.culprits for o in members]))
    events.sort(key=lambda x: -float(x.get("latency", 0) or 0))
    ev.events = events
    if hist is None:
        ev.outcome, ev.reason = EntityOutcome.MISSING, "no distribution recorded"
        return ev
    unseen = sum(o.unseen for o in members)
    budgets = [o.unseen_seconds for o in members if o.unseen]
    budget = None if any(b is None for b in budgets) else sum(b for b in budgets if b is not None)
    ok = evaluate(check.expect, DistributionView(hist, unseen, budget), spec.natural_stat, spec.dimension,
                  window, ev.measurements)
    blind = next((o.blind for o in members if o.blind), "")
    if ok is False:
        ev.outcome = EntityOutcome.FAIL
    elif blind:
        ev.outcome, ev.reason = EntityOutcome.INCONCLUSIVE, blind
    elif ok is None and unseen:
        ev.outcome = EntityOutcome.INCONCLUSIVE
        ev.reason = next((m.note for m in ev.measurements if m.passed is None and m.note),
                         f"{unseen} events were counted by the kernel but never timed")
    elif gone and len(gone) == len(members):
        ev.outcome, ev.reason = EntityOutcome.MISSING, f"gone at +{gone[0].gone_at:.1f}s ({gone[0].gone_reason})"
    elif ok is None:
        ev.outcome = EntityOutcome.MISSING
        ev.reason = next((n for n in notes), "no events observed in the window")
    return ev


# --- against a baseline run ---------------------------------------------------------------

def _stat_of(spec, members: list[Observation], stat: str, window: float) -> float | None:
    if spec.kind == Kind.DISTRIBUTION:
        hist = None
        for o in members:
            if o.histogram is not None:
                hist = o.histogram if hist is None else hist.merge(o.histogram)
        return DistributionView(hist).stat(stat, window).value if hist is not None else None
    values = [SeriesView(o, window, slack=1.0).stat(stat, window).value for o in members]
    values = [v for v in values if v is not None]
    return max(values) if values else None


def judge_regression(check: Check, verdict: Verdict, store: ObservationStore, baseline: ObservationStore,
                     item_labels: Mapping[str, str] | None) -> None:
    """Each entity's `regress:` statistic now against the same entity in the baseline run; a
    regression fails with both figures. Entities only in one of the runs are listed."""
    r = check.regress
    if r is None:
        return
    spec = check.metric
    now_obs = observations_for(check, store, item_labels)
    base_obs = observations_for(check, baseline, item_labels)
    window = store.window.duration or check.window
    base_window = baseline.window.duration or check.window
    regressed = []
    for e in verdict.entities:
        def mine(o: Observation) -> bool:
            return all(o.label_dict.get(k) == v for k, v in e.labels.items())
        now_val = _stat_of(spec, [o for o in now_obs if mine(o)], r.stat, window)
        base_members = [o for o in base_obs if mine(o)]
        if not base_members:
            e.notes.append("not in the baseline run: nothing to compare")
            continue
        base_val = _stat_of(spec, base_members, r.stat, base_window)
        if now_val is None or base_val is None:
            e.notes.append(f"regress: no {r.stat} in {'this run' if now_val is None else 'the baseline'}")
            continue
        limit = r.limit(base_val)
        ok = now_val <= limit
        e.measurements.append(Measurement(
            f"regress {r.text}", f"{r.stat} vs baseline", now_val, format_value(now_val, spec.dimension),
            f"<= {format_value(limit, spec.dimension)} (baseline {format_value(base_val, spec.dimension)})",
            ok, f"baseline {format_value(base_val, spec.dimension)}, now {format_value(now_val, spec.dimension)}",
            limit))
        if not ok:
            e.outcome = EntityOutcome.FAIL
            regressed.append(e.entity)
    seen = {tuple(sorted(e.labels.items())) for e in verdict.entities}
    vanished = sorted({entity_name(o.label_dict) for o in base_obs
                       if not any(all(o.label_dict.get(k) == v for k, v in dict(s).items()) for s in seen)})
    if vanished:
        verdict.notes.append(f"in the baseline but not in this run: {', '.join(vanished[:10])}")
    if regressed:
        prior = verdict.reason if verdict.outcome == Outcome.FAIL else ""
        verdict.outcome = Outcome.FAIL
        verdict.reason = (prior + "; " if prior else "") + \
            f"regressed against the baseline: {', '.join(regressed[:5])}"
