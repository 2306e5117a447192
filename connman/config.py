"""The one pool configuration schema, its presets, and the settings loader.

The names every module and app import from here live in three modules, one job each:
`_schemes` (URL schemes: backend, driver, extra; the URL as connman uses it), `_poolconfig`
(`PoolConfig`, its validators and presets) and `_settings` (`load_settings`, `ConnmanSettings`,
`validate_pools` and errors that say where a value was set). This module only re-exports them:
none of the three imports it, so there is no import cycle.
"""

from __future__ import annotations

from ._poolconfig import PRESETS, PoolConfig
from ._poolconfig import FieldError as FieldError
from ._schemes import DRIVERLESS_POSTGRES as DRIVERLESS_POSTGRES
from ._schemes import POSTGRES_PREFERENCE as POSTGRES_PREFERENCE
from ._schemes import SCHEMES, backend_of
from ._schemes import backend_of_or_none as backend_of_or_none
from ._schemes import resolve_url as resolve_url
from ._settings import ConnmanSettings, load_settings, validate_pools
from ._settings import config_error as config_error
from ._settings import settings_pools as settings_pools
from ._settings import with_source as with_source

__all__ = [
    "PRESETS", "SCHEMES", "ConnmanSettings", "PoolConfig", "backend_of", "load_settings",
    "validate_pools",
]
