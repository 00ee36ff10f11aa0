"""Test support: code the test suite runs, never the service."""
