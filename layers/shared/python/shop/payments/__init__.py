"""Payment providers: the interface (``provider``), the built-in simulator (``simulator``) and the
shared circuit breaker every provider call passes through (``circuit_breaker``)."""
