"""The Batches API's service layer in-process, on the embedded database: validation errors
past the cap are counted, not dropped."""

from __future__ import annotations

import json

from batchq.config import Settings
from batchq.service import batches, files
from batchq.store import tenancy
from batchq.store.tenancy import Tenant


def test_errors_past_the_cap_are_counted_in_a_last_entry(tmp_path, monkeypatch):
    settings = Settings.from_env({"BATCHQ_HOME": str(tmp_path)})
    tenant = Tenant("k" * 12, "cap-test", "0" * 64)
    file_id = files.new_file_id()
    with files.receiving(settings, file_id) as receiver:
        receiver.write(b"".join(b'{"bad": %d\n' % i for i in range(7)))
    view = files.register_upload(settings, tenant.name, file_id, "bad.jsonl", "batch",
                                 receiver, None)
    monkeypatch.setattr(batches, "MAX_ERRORS_SHOWN", 3)
    failed = batches.create(settings, tenant, view.id, "/v1/chat/completions", "24h", None)
    assert failed.status == "failed" and failed.row.errors_total == 7
    assert [e["line"] for e in failed.row.errors] == [1, 2, 3, None]
    assert failed.row.errors[-1] == {"code": "too_many_errors", "param": None, "line": None,
                                     "message": "4 more invalid line(s) not listed"}
    assert json.loads(json.dumps(failed.row.errors))  # stored and read back as JSON
    assert tenancy.get_batch(settings, tenant.name, failed.row.id) == failed.row
