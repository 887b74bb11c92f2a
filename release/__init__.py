"""Release checks: ``./dev smoke-aws`` (release/smoke_aws.py)."""
