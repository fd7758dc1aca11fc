"""The domain, with no I/O: the schema's types, the query vocabulary every layer speaks,
argument validation and cursors, the tolerant reader of upstream items, and the connection.
"""
