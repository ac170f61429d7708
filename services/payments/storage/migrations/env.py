from tokenforge.runtime.db import run_env

from services.payments.storage.tables import metadata

run_env(metadata)
