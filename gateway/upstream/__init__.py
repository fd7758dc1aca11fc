"""Talking to Webex: the body reader, retry policy, circuit breaker and the upstream client."""
