"""Mutation testing of the security rules, on demand (``./dev mutate MODULE``); not in CI."""
