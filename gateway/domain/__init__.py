"""The numbers domain, with no I/O and no GraphQL: its values (``enums``, ``records``), the query
vocabulary every layer speaks (``query``), argument rules and cursors (``arguments``), the
tolerant reader of upstream items (``reader``), the connection over a page (``connection``) and
the change rules of a feed (``changes``). It imports neither strawberry nor graphql-core."""
