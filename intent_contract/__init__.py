"""The wire contract shared by the edge outbox and the cloud bridge.

Pure code only: names, schemas, ids, time formats and the msgpack codec. No I/O beyond reading the
bundled JSON Schemas once.
"""
