"""Evidence: what a reviewer needs to believe a verdict without rerunning it.

Records are plain dataclasses (they go to the terminal, JUnit properties and the JSON report);
rendering lives here too, and so does redaction, because evidence leaves the node.
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from typing import Any

from .histogram import RELATIVE_ERROR, Histogram
from .model import EntityOutcome, Outcome
from .units import format_duration, format_value

REDACTED = "<redacted>"

# Redaction is by rule, not by a list of known options. A key (of key=value, key: value,
# --key value or --key=value) names a secret when one of its word parts - split at
# non-alphanumerics and camelCase humps - does:
#   * contains passw, passphrase, passcode, pwd, secret, token, credential, cookie, session,
#     signature, csrf or xsrf (client_secret, access_token, DB_PASSWORD, password-secret);
#   * is pass, pw, cred, creds, sig, jwt, otp, psk or private; ends with pass (storepass,
#     dbpass) except the English words bypass, compass, ...; or starts or ends with auth
#     (auth, authorization, oauth, X-Auth-Token), except author(s);
#   * is key/keys, or "key" glued to a word that says what kind of key it is (apikey,
#     accesskey, privkey, sshkey, ...). Other words ending in "key" (monkey, hotkey) and
#     words that merely start with it (keyboard, keymap) are not secrets.
# Where a rule errs it errs towards redacting: a redacted harmless value costs less than a leak.
_SECRET_STEMS = ("passw", "passphrase", "passcode", "pwd", "secret", "token", "credential", "cookie",
                 "session", "signature", "csrf", "xsrf")
_SECRET_PARTS = {"pass", "pw", "cred", "creds", "sig", "jwt", "otp", "psk", "private", "key", "keys"}
_KEY_QUALIFIERS = ("api", "access", "private", "priv", "auth", "master", "signing", "sign", "encryption",
                   "enc", "crypt", "ssh", "host", "client", "shared", "pass", "storage", "account",
                   "app", "license", "p")
_GLUED_KEY_RE = re.compile(r"(?:%s)keys?\Z" % "|".join(_KEY_QUALIFIERS))
_NOT_PASS = ("bypass", "compass", "encompass", "surpass", "trespass", "overpass", "underpass")
_WORD_PART_RE = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+")

# key=value / key: value / "key": value, and --flag value / --flag=value
_KEY_RE = re.compile(
    r"""(?<![\w.-])(?:(?P<q>["']?)(?P<key>[A-Za-z_][\w.-]*)(?P=q)(?P<sep>[ \t]*[=:][ \t]*)"""
    r"""|(?P<flag>--?[A-Za-z_][\w.-]*)(?P<fsep>=|[ \t]+))""")
# an unquoted value ends at whitespace or a separator of the surrounding syntax (",", "&", ";");
# qemu escapes a comma as ",,", rbd a colon as "\:"; a colon ends it only before another key=
_VALUE_RE = re.compile(r"""(?:,,|\\.|:(?![A-Za-z_][\w.-]*=)|[^\s,;&"'\\:\x00])+""")
_QUOTED_RE = re.compile(r""""[^"\n]*"?|'[^'\n]*'?""")
_LINE_RE = re.compile(r"""[^\r\n\x00"']*""")
_ARG_RE = re.compile(r"""\S+""")
# scheme://userinfo@host: the userinfo runs to the last '@' of the URL (passwords hold '@' and '/')
_URL_RE = re.compile(r"""(?i)(?<![a-z0-9+.-])([a-z][a-z0-9+.-]*://)([^\s"']*)""")
# qemu -object secret,id=x,data=...: "data" is a secret only inside a secret object
_QEMU_SECRET_DATA_RE = re.compile(
    r"""(\bsecret\b[^\n]{0,200}?[,{]\s*["']?data["']?\s*[=:]\s*["']?)((?:,,|[^,"'\s}])+)""")
_BEARER_RE = re.compile(r"(?i)\b(bearer\s+)([A-Za-z0-9._~+/-]+=*)")


@functools.lru_cache(maxsize=4096)
def names_secret(key: str) -> bool:
    """Whether an option or variable name says its value is a secret (see the rule above)."""
    for part in _WORD_PART_RE.findall(key):
        p = part.lower()
        if (p in _SECRET_PARTS or any(s in p for s in _SECRET_STEMS) or _GLUED_KEY_RE.match(p)
                or (p.endswith("pass") and p not in _NOT_PASS)
                or ((p.startswith("auth") or p.endswith("auth")) and p not in ("author", "authors"))):
            return True
    return False


def _redact_keys(text: str) -> str:
    out, pos, copied = [], 0, 0
    while True:
        m = _KEY_RE.search(text, pos)
        if not m:
            break
        name = m.group("key") or m.group("flag")
        sep = m.group("sep") or m.group("fsep")
        end = m.end()
        if not names_secret(name):
            pos = end          # the value may itself hold key=value pairs: scan it too
            continue
        if m.group("flag") and sep != "=":
            v = _QUOTED_RE.match(text, end) or _ARG_RE.match(text, end)
            if v and v.group().startswith("--"):   # the next option, not a value
                v = None
        elif text.startswith(("'", '"'), end):
            v = _QUOTED_RE.match(text, end)
        elif ":" in sep and sep != sep.rstrip():
            v = _LINE_RE.match(text, end)       # header style "Authorization: Basic xyz"
        else:
            v = _VALUE_RE.match(text, end)
        span = v.group() if v else ""
        if not span.strip() or span.strip("'\"") == REDACTED:   # nothing, or done already
            pos = end
            continue
        quote = span[0] if span[0] in "'\"" else ""
        closed = quote and len(span) > 1 and span.endswith(quote)
        out.append(text[copied:end] + quote + REDACTED + (quote if closed else ""))
        pos = copied = v.end()
    out.append(text[copied:])
    return "".join(out)


def _redact_userinfo(m: re.Match) -> str:
    scheme, rest = m.group(1), m.group(2)
    at = rest.rfind("@")
    if at <= 0 or rest[:at] == REDACTED:
        return m.group()
    return scheme + REDACTED + rest[at:]


_SURROGATE_RE = re.compile("[\ud800-\udfff]")


@functools.lru_cache(maxsize=1 << 16)
def clean_text(text: str) -> str:
    """redact() of one string of a saved report, lone surrogates replaced; cached: a fleet's
    reports repeat the same names, notes and commands thousands of times."""
    return redact(_SURROGATE_RE.sub("\ufffd", text))


def redact_tree(data: Any, limit: int = 10_000_000) -> Any:
    """A parsed report (another node's, possibly crafted) with every string redacted and every
    lone surrogate replaced, so no reader prints a secret or fails to encode a name. Walked
    without recursion, in place; returns data."""
    stack = [data]
    while stack:
        v = stack.pop()
        if isinstance(v, list) and all(type(x) is float or type(x) is int for x in v):
            continue      # a series or a bucket: nothing to redact (most of a report)
        items = v.items() if isinstance(v, dict) else enumerate(v) if isinstance(v, list) else ()
        for k, x in list(items):
            if isinstance(x, str):
                v[k] = clean_text(x)
            elif isinstance(x, (dict, list)):
                stack.append(x)
            if isinstance(v, dict) and isinstance(k, str) and _SURROGATE_RE.search(k):
                v[_SURROGATE_RE.sub("\ufffd", k)] = v.pop(k)
    return data


def public_info(info: dict[str, str]) -> dict[str, str]:
    """Descriptive attributes as evidence shows them anywhere (terminal, JUnit, JSON): a value
    whose key names a secret (a container label `api_token`) is withheld, others redacted."""
    return {k: REDACTED if _names_secret_key(k) else clean_text(str(v)) for k, v in info.items()}


@functools.lru_cache(maxsize=4096)
def _names_secret_key(key: str) -> bool:
    """names_secret of an info key's last part (`container.label.api_token`: api_token)."""
    return names_secret(key.rsplit(".", 1)[-1])


# what is a secret by its shape, whatever names it: a PEM private key block (also cut short), a
# JSON Web Token (three base64url parts, the first two a JSON object: "eyJ"), user:password@host
# with no scheme, a URL-encoded key=value (password%3Dhunter2), and the value of `-p` (the
# password flag of mysql, redis-cli and many more; a port given as -p is withheld too: over-
# redacting a port is harmless, leaking a password is not)
_PEM_RE = re.compile(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----.*?(?:-----END [A-Z0-9 ]*PRIVATE KEY-----|\Z)", re.S)
_JWT_RE = re.compile(r"\beyJ[A-Za-z0-9_-]{4,}\.eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*")
_USERINFO_RE = re.compile(r"""(?<![\w.:/@-])([\w.~%+-]+):([^\s@/"':=]+)@(?=[\w.-]+)""")
_ENCODED_KEY_RE = re.compile(r"(?i)(?<![\w.-])([A-Za-z_][\w.-]*)(%3D|%3A)([^\s&;,\"']+)")
_SHORT_P_RE = re.compile(r"""(?<![\w-])(-p)([ \t]+|=)?(?!-)("[^"]*"|'[^']*'|[^\s"']+)""")


def _redact_encoded(m: re.Match) -> str:
    return m.group(1) + m.group(2) + REDACTED if names_secret(m.group(1)) else m.group()


def redact(text: str) -> str:
    """Remove secrets from a command line or environment string before it becomes evidence."""
    # each rule runs only where the text holds what its pattern cannot match without (a saved
    # report's hundred thousand cgroup paths cost a substring test each, not nine searches)
    if "PRIVATE KEY" in text:
        text = _PEM_RE.sub(REDACTED, text)
    if "eyJ" in text:
        text = _JWT_RE.sub(REDACTED, text)
    if "://" in text:
        text = _URL_RE.sub(_redact_userinfo, text)
    if "@" in text:
        text = _USERINFO_RE.sub(lambda m: m.group(1) + ":" + REDACTED + "@", text)
    if "%3" in text:
        text = _ENCODED_KEY_RE.sub(_redact_encoded, text)
    if "-p" in text:
        text = _SHORT_P_RE.sub(lambda m: m.group(1) + (m.group(2) or "") + REDACTED, text)
    if "secret" in text:
        text = _QEMU_SECRET_DATA_RE.sub(lambda m: m.group(1) + REDACTED, text)
    if "=" in text or ":" in text or "-" in text:
        text = _redact_keys(text)
    return _BEARER_RE.sub(lambda m: m.group(1) + REDACTED, text)


@dataclass
class Measurement:
    """One leaf of the assertion, as judged."""

    expression: str         # the leaf as written, e.g. "p99 < 100us"
    statistic: str          # e.g. "p99", "count(> 10ms)", "each sample"
    measured: float | None  # base unit (or a count)
    measured_text: str
    threshold_text: str
    passed: bool | None
    note: str = ""
    threshold: float | None = None   # base unit, for machine readers (Prometheus, baselines)


@dataclass
class EntityEvidence:
    entity: str
    labels: dict[str, str]
    info: dict[str, str]
    outcome: str                       # an EntityOutcome
    measurements: list[Measurement] = field(default_factory=list)
    samples: int = 0
    expected_samples: int = 0
    observed_seconds: float = 0.0
    series: dict[str, Any] | None = None       # min/mean/max, longest violation
    histogram: Histogram | None = None
    events: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    reason: str = ""
    culprits: list[dict] = field(default_factory=list)   # who took the CPU while it waited

    def to_json(self) -> dict[str, Any]:
        """The report's form: descriptive info is redacted, since evidence leaves the node."""
        d = {
            "entity": self.entity, "labels": self.labels, "info": public_info(self.info),
            "outcome": self.outcome, "reason": self.reason, "samples": self.samples,
            "expected_samples": self.expected_samples, "observed_seconds": self.observed_seconds,
            "measurements": [m.__dict__ for m in self.measurements], "series": self.series,
            "events": self.events, "notes": self.notes,
        }
        if self.culprits:
            d["culprits"] = self.culprits
        return d


def merge_culprits(lists: list[list[dict]], keep: int = 5) -> list[dict]:
    """Several entities' culprits as one entity's (a judged merge of CPUs): waits of one pid add
    up and shares are recomputed over the merged wait (a list's whole wait is wait / share of
    any of its entries)."""
    lists = [c for c in lists if c]
    if len(lists) <= 1:
        return list(lists[0]) if lists else []
    total = 0.0
    by_pid: dict[Any, dict] = {}
    for cs in lists:
        whole = next((c["wait"] / c["share"] for c in cs if isinstance(c.get("wait"), (int, float))
                      and isinstance(c.get("share"), (int, float)) and c["share"] > 0), None)
        if whole is None:
            continue
        total += whole
        for c in cs:
            key = (c.get("pid"), c.get("comm") if c.get("pid") == 0 else "")   # each CPU has its idle task
            got = by_pid.get(key)
            by_pid[key] = {**c, "wait": (got["wait"] if got else 0.0) + float(c.get("wait") or 0.0)}
    merged = sorted(by_pid.values(), key=lambda c: -c["wait"])[:keep]
    return [{**c, "share": round(c["wait"] / total, 4) if total else 0.0} for c in merged]


@dataclass
class Verdict:
    outcome: str              # an Outcome (error: inconclusive)
    reason: str
    entities: list[EntityEvidence]
    window: float
    dimension: str
    expect: str
    metric: str
    for_: float | None = None
    notes: list[str] = field(default_factory=list)

    def properties(self) -> list[tuple[str, str]]:
        """Flat key/value pairs for JUnit <properties>."""
        props = [("vcheck.outcome", self.outcome), ("vcheck.metric", self.metric),
                 ("vcheck.expect", self.expect), ("vcheck.window", format_duration(self.window))]
        if self.for_:
            props.append(("vcheck.for", format_duration(self.for_)))
        if self.reason:
            props.append(("vcheck.reason", self.reason))
        for e in self.entities:
            for m in e.measurements:
                props.append((f"vcheck.{e.entity}.{m.statistic}", m.measured_text))
            props.append((f"vcheck.{e.entity}.samples", str(e.samples)))
        return props


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def printable(text: str) -> str:
    """Names from the node (a task's comm, a container's name, a device) reach a terminal:
    control characters are shown escaped, never sent raw."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100 else
                        f"\\u{ord(m.group()):04x}", text)


# a verdict as an operator reads it (pytest's 'error' is vcheck's inconclusive)
OUTCOME_WORD = {"pass": "PASS", "fail": "FAIL", "error": "INCONCLUSIVE", "skip": "SKIP", "waived": "WAIVED",
                "not-run": "NOT RUN"}


def render(v: Verdict, description: str = "", remediation: str = "", max_entities: int = 12) -> str:
    """The text a human reads in one glance: verdict line, then the offending entities first."""
    lines = [f"{v.metric} expect {v.expect!r}" + (f" for {format_duration(v.for_)}" if v.for_ else "")
             + f" over {format_duration(v.window)}: {OUTCOME_WORD.get(v.outcome, str(v.outcome).upper())}"
             + (f" ({v.reason})" if v.reason else "")]
    if description:
        lines.append(f"  why it matters: {description}")
    order = {EntityOutcome.FAIL: 0, EntityOutcome.INCONCLUSIVE: 1, EntityOutcome.MISSING: 2, EntityOutcome.PASS: 3}
    shown = sorted(v.entities, key=lambda e: order.get(e.outcome, 9))
    for e in shown[:max_entities]:
        lines.extend(_render_entity(e, v))
    if len(shown) > max_entities:
        lines.append(f"  ... {len(shown) - max_entities} more entities in the JSON report")
    for n in v.notes:
        lines.append(f"  note: {n}")
    if remediation and v.outcome == Outcome.FAIL:
        lines.append(f"  remediation: {remediation}")
    return "\n".join(printable(line) for line in lines)


def _render_entity(e: EntityEvidence, v: Verdict) -> list[str]:
    info = ", ".join(f"{k}={val}" for k, val in public_info(e.info).items())
    head = f"  [{e.entity}] {e.outcome}" + (f" ({info})" if info else "")
    if e.reason:
        head += f": {e.reason}"
    out = [head]
    for m in e.measurements:
        mark = {True: "ok", False: "VIOLATED", None: "undecided"}[m.passed]
        out.append(f"      {m.statistic} = {m.measured_text}  (threshold {m.threshold_text})  {mark}"
                   + (f"; {m.note}" if m.note else ""))
    if e.samples or e.expected_samples:
        out.append(f"      samples: {e.samples}" + (f" of {e.expected_samples} expected" if e.expected_samples else "")
                   + f", observed {format_duration(e.observed_seconds) if e.observed_seconds else '0s'}")
    if e.series:
        s = e.series
        out.append(f"      series: min {format_value(s['min'], v.dimension)}, mean "
                   f"{format_value(s['mean'], v.dimension)}, max {format_value(s['max'], v.dimension)}")
        lv = s.get("longest_violation")
        if lv:
            out.append(f"      longest violation: {format_duration(lv['duration'])} "
                       f"(+{lv['start']:.1f}s to +{lv['end']:.1f}s, {lv['samples']} samples)")
    if e.histogram is not None and e.histogram.count:
        out.extend("      " + line for line in render_histogram(e.histogram, v.dimension))
    if e.outcome != EntityOutcome.PASS:
        for c in e.culprits:
            share = c.get("share")
            out.append("      culprit: " + (f"{share:.0%} of the wait went to " if isinstance(share, (int, float)) else "")
                       + f"{c.get('describe') or c.get('comm')}"
                       + (f", cgroup {c['cgroup']}" if c.get("cgroup") not in (None, "", "/") else ""))
    for ev in e.events[:10]:
        out.append("      event: " + ", ".join(f"{k}={_fmt_event(k, val, v.dimension)}" for k, val in ev.items()))
    if len(e.events) > 10:
        out.append(f"      ... {len(e.events) - 10} more events in the JSON report")
    for n in e.notes:
        out.append(f"      note: {n}")
    return out


def _fmt_event(key: str, val: Any, dim: str) -> str:
    if key in ("latency", "duration") and isinstance(val, (int, float)):
        return format_value(val, dim)
    return str(val)


def render_histogram(h: Histogram, dimension: str, width: int = 30, max_rows: int = 14) -> list[str]:
    """A text histogram; adjacent fine buckets are merged to at most max_rows rows."""
    items = sorted(h.to_json()["buckets"], key=lambda b: b[0])
    if not items:
        return []
    # merge down to at most max_rows rows, keeping bucket bounds honest
    per_row = max(1, -(-len(items) // max_rows))
    rows = []
    for i in range(0, len(items), per_row):
        chunk = items[i:i + per_row]
        rows.append((chunk[0][1], chunk[-1][2], sum(c[3] for c in chunk)))
    peak = max(r[2] for r in rows) or 1
    out = [f"distribution ({h.count} events, bucket error <= {RELATIVE_ERROR:.2%}):"]
    for lo, hi, n in rows:
        bar = "#" * max(1, round(width * n / peak)) if n else ""
        out.append(f"  [{format_value(lo * h.scale, dimension):>9}, {format_value(hi * h.scale, dimension):>9}) "
                   f"{n:>8} {bar}")
    return out
