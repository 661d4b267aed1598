"""How a stage tells the store that a column holds hash values.

MinHash signatures, band keys and shingle hashes are uniformly random integers: Parquet's
dictionary pages and zstd spend time on them and save nothing. A stage marks such a column with
:func:`plain_field`; the store (``storage.store.parquet_options``) then writes it plain. The mark
is field metadata, so it travels with the table and changes only how its files are encoded.
"""

from __future__ import annotations

import pyarrow as pa

PLAIN_KEY = b"winnow.store.plain"


def plain_field(name: str, type_: pa.DataType) -> pa.Field:
    """A field whose values do not compress: written without dictionary or compression."""
    return pa.field(name, type_, metadata={PLAIN_KEY: b"1"})
