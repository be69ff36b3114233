"""Storage: reading bytes where they lie, for the loader and the preparation.

``remote``: files on object storage and web servers through fsspec (``s3://``, ``gs://``, ``https://``),
with timeouts, retries, a quarantine of objects that keep failing and a local block cache;
``shards``: videos inside WebDataset / video2dataset tar shards, addressed as ``TAR#MEMBER@OFFSET+SIZE``
and read by range; ``ranged_file``: the seekable file object of ranged reads that PyAV opens;
``read_ahead``: the bytes of the batches ahead, fetched into shared memory while earlier ones decode.
May import vito_fast.errors only (layer 0): ``data`` and ``prepare`` build on it.
"""
