"""Benchmarks against Mosquitto and plain amqtt; `python -m bench` writes BENCHMARKS.md."""
