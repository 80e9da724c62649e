"""Shared by the edge outbox and the cloud bridge.

The wire contract, as pure code: names, schemas, ids, time formats, backoff, device tokens and the
msgpack codec. Plus what both sides' storage is built on: the SQLite group-commit writer
(`sqlite_writer`, the one piece of I/O) and the line between SQLite faults and bugs (`sqlite_faults`).
"""
