"""Cost measurements run on demand (not part of the test suite): see each module's docstring."""
