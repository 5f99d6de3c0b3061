"""The test suite (a package, so `tests.conftest` never resolves to a `tests` package a dependency installs)."""
