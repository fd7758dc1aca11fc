"""The HTTP layer: the GraphQL view and the middleware in front of it."""
