"""A preload for the zygote tests. With ZYGOTE_TEST_LATE_THREAD set, it starts a thread
a little after its import: the zygote must then refuse to fork."""

import os
import threading
import time

IMPORTED_IN = os.getpid()

if os.environ.get("ZYGOTE_TEST_LATE_THREAD"):
    def _late() -> None:  # the timer's own thread ends: start two to grow by one
        for _ in range(2):
            threading.Thread(target=time.sleep, args=(3600,), daemon=True).start()

    threading.Timer(0.6, _late).start()


def fold(ctx):
    import zygote_preload

    time.sleep(ctx.params.get("seconds", 0.1))
    return {"pid": os.getpid(), "imported_in": zygote_preload.IMPORTED_IN}
