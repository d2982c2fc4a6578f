"""The shop's shared package, shipped to every function as the `SharedLayer` Lambda layer.

Layout (handlers -> logic -> data access):
- ``models``: pydantic models at every boundary (HTTP bodies, saga step inputs/outputs, records).
- ``domain``: the business rules; never imports boto3.
- ``repositories``: the only code that talks to DynamoDB.
- ``errors``: every exception a client or a state machine can see, with its HTTP status.
- ``config``: pydantic-settings models, validated once per cold start.
- ``aws``: lazily built, cached boto3 clients.
- ``observability``: the Powertools logger, tracer and metrics every entry point shares.
"""
