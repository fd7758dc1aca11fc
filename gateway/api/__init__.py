"""The GraphQL layer: the request context, the root resolvers, and the executable schema."""
