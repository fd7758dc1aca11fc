"""numbers-gateway: a GraphQL gateway over Webex Calling's list-phone-numbers endpoint.

``gateway.server.app.create_app(settings)`` builds the ASGI app; ``gateway.server.cli`` is the
``numbers-gateway`` command. The layers, top to bottom: ``server``, ``transports``,
``execution``, ``schema``, ``changes``, ``data``, ``upstream``, ``domain``, and the foundation.
"""
