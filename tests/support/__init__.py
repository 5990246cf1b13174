"""Helpers shared by the test suites (real components started by the tests themselves)."""
