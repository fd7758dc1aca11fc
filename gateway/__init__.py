"""numbers-gateway: a GraphQL gateway over Webex Calling's list-phone-numbers endpoint.

``gateway.server.app.create_app(settings)`` builds the ASGI app; ``gateway.server.cli`` is the command.
"""

__version__ = "0.1.0"
