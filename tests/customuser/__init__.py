"""A site user model keyed by email, with no ``username`` field (tests/test_custom_user.py)."""
