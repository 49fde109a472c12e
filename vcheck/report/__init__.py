"""What a run leaves behind: the versioned JSON report, the Prometheus textfile (both written by
the recorder plugin through output.py), node facts and the fleet merge. JUnit comes from pytest."""
