"""The GraphQL layer: the request context, the root resolvers, the executable schema and its
extensions (error contract, document guards, cost, cache report, operation observer), the
federation subgraph, and the projection fast path."""
