"""The benchmark suite (`make bench`, `python -m bench --help`); not part of the test suite."""
