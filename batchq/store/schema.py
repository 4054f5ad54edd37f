"""Every table, in one metadata: what migrations are compared with (tests) and run against."""

from batchq.store import api_models, models, schedule_models
from batchq.store.columns import Base

TABLE_MODULES = (models, api_models, schedule_models)

__all__ = ["TABLE_MODULES", "Base"]
