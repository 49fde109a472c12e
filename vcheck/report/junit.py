"""vcheck's JUnit file: pytest's junitxml writes it (file and line of the policy on each
<testcase>, properties, system-out); this puts vcheck's outcome words in it, where pytest's
would say 'failed on setup with "Failed: ..."' for an inconclusive check or 'xfail' for a
waived one. CI systems still count an inconclusive check as an error and a waived one as
skipped: only the words change."""
from __future__ import annotations

import xml.etree.ElementTree as ET

_SETUP = ('failed on setup with "', 'failed on teardown with "')


def with_vcheck_words(data: bytes) -> bytes:
    """The JUnit file pytest wrote (vcheck's own, trusted), with vcheck's outcome words."""
    root = ET.fromstring(data)
    for case in root.iter("testcase"):
        for error in case.findall("error"):
            message = error.get("message", "")
            for prefix in _SETUP:
                if message.startswith(prefix):
                    message = message[len(prefix):].rstrip('"').removeprefix("Failed: ")
            error.set("message", "inconclusive: " + message.split("\n", 1)[0])
            error.set("type", "vcheck.inconclusive")
        for skipped in case.findall("skipped"):
            if skipped.get("type") == "pytest.xfail":
                skipped.set("type", "vcheck.waived")
                skipped.set("message", "waived: " + skipped.get("message", "").removeprefix("reason: "))
            else:
                skipped.set("type", "vcheck.skip")
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)
