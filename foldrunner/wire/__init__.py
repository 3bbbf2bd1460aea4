"""The bytes between a fold's process and the orchestrator: the typed messages, the framing, the restricted decoder, the outcome types."""
