"""Per-project resources: the name rule, the MySQL schema provider, the project component."""
