"""The review console: queues of review items leased to people, and the web page they use."""
