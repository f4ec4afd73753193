"""Builders the test files share: synthetic feature stores and worlds, model inputs, small
training tasks, checkpoints in the original layouts and the official evaluation files.

Test files import them as `tests.helpers.<module>`; no test file imports another."""
