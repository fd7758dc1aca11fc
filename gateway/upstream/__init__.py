"""Talking to Webex: the resilient httpx transport (breaker, deadline, fair slots, retries,
bounded reads), the client that walks ``Link`` pages and maps errors, and their assembly."""
