"""Blocking work off the gevent loop: `offload` for CPU work, `offload_tf` for TensorFlow.

Under gevent (`python app.py` serves with it) a blocking call in a request would stall every
other request; these helpers run it in a native thread of gevent's instead and block only the
calling greenlet. Without gevent's monkey-patching (test client, worker, CLI, threaded
servers) they call the function directly. This module imports neither gevent nor TensorFlow
at import time.
"""
from __future__ import annotations

import threading
from collections.abc import Callable


def _gevent_patched() -> bool:
    try:
        from gevent import monkey
    except ImportError:  # pragma: no cover - gevent is a dependency
        return False
    return monkey.is_module_patched("threading")


_warmed = False


def warm_platform_cache() -> None:
    """Fill `platform`'s caches from the main thread. Importing TensorFlow asks for
    `platform.uname().processor`, which runs `uname -p` in a subprocess; started from a thread
    of gevent's pool, that subprocess never reports back and the import hangs. `python app.py`
    calls this before serving; `offload` calls it again (a no-op) for other servers."""
    global _warmed
    if not _warmed:
        import platform

        platform.uname().processor  # noqa: B018  (cached on the shared uname result)
        _warmed = True


def offload(func: Callable, *args, **kwargs):
    """Run blocking CPU work off the gevent loop (in its native thread pool) when serving
    under gevent; call it directly otherwise (test client, worker, CLI)."""
    if _gevent_patched():
        import gevent

        warm_platform_cache()
        return gevent.get_hub().threadpool.apply(func, args, kwargs)
    return func(*args, **kwargs)


_tf_pool = None


def offload_tf(func: Callable, *args, **kwargs):
    """Like `offload`, for TensorFlow work: always the same single native thread.

    Under gevent's monkey-patching, TensorFlow's Python-level locks are gevent locks, and two
    native threads contending for one of them deadlock. One thread for all TensorFlow calls
    means no contention (and TensorFlow uses every core within a call anyway)."""
    if _gevent_patched():
        global _tf_pool
        from gevent.threadpool import ThreadPool

        warm_platform_cache()
        if _tf_pool is None:
            _tf_pool = ThreadPool(1)
        return _tf_pool.apply(func, args, kwargs)
    with _direct_lock:  # threaded servers: one TensorFlow call at a time here too
        return func(*args, **kwargs)


_direct_lock = threading.RLock()
