"""Helpers shared by the test suites: real servers and processes on loopback, and waiting on conditions."""
