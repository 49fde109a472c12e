"""Report writers: JSON (versioned). JUnit comes from pytest itself."""
