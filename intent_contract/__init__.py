"""Shared by the edge outbox and the cloud bridge.

The wire contract, as pure code: names, schemas, ids, time formats, backoff, device tokens and the
msgpack codec. Plus one piece of I/O both sides' storage is built on: the SQLite group-commit writer
(`sqlite_writer`).
"""
