"""The data synchroniser and what runs it: the cache, retries, the file watcher (`kmesh-apply watch`).

It lives above the in-process API, beside the executor: config/, plan/ and kernel/ do not know it.
"""

from kmesh_apply.sync.retries import MapStatus
from kmesh_apply.sync.synchroniser import Synchroniser

__all__ = ["Synchroniser", "MapStatus"]
