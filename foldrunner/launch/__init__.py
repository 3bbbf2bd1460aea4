"""How a fold's process comes to exist: the fold server, warm spares, the zygote; every multiprocess workaround lives here."""
