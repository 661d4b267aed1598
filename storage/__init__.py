"""The content-addressed dataset store: fingerprints, manifests, atomic writes, lineage."""

from storage.codeversion import code_version
from storage.fingerprint import derive_fingerprint, file_fingerprint, short, table_fingerprint
from storage.store import DatasetStore, Manifest

__all__ = [
    "DatasetStore",
    "Manifest",
    "code_version",
    "derive_fingerprint",
    "file_fingerprint",
    "short",
    "table_fingerprint",
]
