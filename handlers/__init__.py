"""Example handler functions, one per use case. Each is a plain Lambda handler: handler(event, context)."""
