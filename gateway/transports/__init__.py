"""The HTTP layer: the middleware in front of ``/graphql``, the view, the operation runner
it hands requests to, and the response styles that write the answers."""
