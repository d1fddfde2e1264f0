"""The package version, in a module of its own so that any module can import it without
importing the package root (``radixrt/__init__.py``). Keep equal to ``version`` in
pyproject.toml (tests/model/test_imports.py checks)."""

__version__ = "0.1.0"
