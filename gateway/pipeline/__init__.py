"""The per-request data path: the cross-request cache, per-request loaders, and the
``NumbersSource`` that every consumer of numbers goes through."""
