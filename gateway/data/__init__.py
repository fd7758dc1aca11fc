"""The per-request data path: the page cache across requests (on a local tier and a guarded
Redis, which the HTTP layer's stores use too), per-request loaders, and the ``NumbersSource``
that every consumer of numbers goes through."""
