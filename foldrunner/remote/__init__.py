"""The Ray backend: each attempt is one Ray task that supervises its fold on a node with
the same :class:`~foldrunner.engine.attempt.Attempt` as the local backend. Imported only
with ``backend: ray``; everything here needs ``ray`` (``pip install 'foldrunner[ray]'``)."""
