"""What runs inside a fold's process: the entry, the task, the lifeline, the context, the Keras helpers. Imports nothing heavy."""
