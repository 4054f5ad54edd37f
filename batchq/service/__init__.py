"""The Python API: what the CLI calls, and what the HTTP API and the scheduler will call.

Every function takes an optional Settings (default: from the environment) and returns values
(batchq.store.views.JobView and friends), never dicts shaped for one printer.
"""

from batchq.service.keys import NewKey, create_key, list_keys, revoke_key
from batchq.service.lifecycle import Retried, cancel, retry, wait
from batchq.service.reading import (
    Written,
    active_jobs,
    chunks,
    list_jobs,
    results,
    status,
    write_results,
)
from batchq.service.submit import JobSettings, check_services, submit, validate_file

__all__ = ["JobSettings", "NewKey", "Retried", "Written", "active_jobs", "cancel",
           "check_services", "chunks", "create_key", "list_keys", "list_jobs", "results",
           "retry", "revoke_key", "status", "submit", "validate_file", "wait", "write_results"]
