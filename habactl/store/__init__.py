"""Prepared stores: a data set decoded once into uint8 files on disk, read lazily.

``habactl prepare`` writes one; :func:`open_store` reads it. docs/store.md specifies
the layout.
"""

from habactl.store.layout import StoreError
from habactl.store.reader import Store, is_store, open_store, reseal, verify_store
from habactl.store.small import write_store

__all__ = ["Store", "StoreError", "is_store", "open_store", "reseal", "verify_store", "write_store"]
