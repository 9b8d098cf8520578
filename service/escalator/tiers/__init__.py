"""What each tier does with a record.

The cheap and strong handlers and the routing rule between them.
"""
