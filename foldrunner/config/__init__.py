"""The spec as users write it: the strict YAML loader with line numbers, units, the pydantic models, the plan of folds."""
