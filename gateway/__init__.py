"""numbers-gateway: a GraphQL gateway over Webex Calling's list-phone-numbers endpoint.

``gateway.app.create_app(settings)`` builds the ASGI app; ``gateway.cli`` is the command.
"""

__version__ = "0.1.0"
