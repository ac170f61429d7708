from services.gateway.storage.tables import metadata
from tokenforge.runtime.db import run_env

run_env(metadata)
