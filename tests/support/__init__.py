"""Helpers the tests share: forged slots, environment flags, launcher environments, a third transport."""
