"""Feast's file registry, written atomically.

Feast 0.67's ``FileRegistryStore`` rewrites ``registry.db`` in place (``open(path, "wb")`` then write), so a
process reading it meanwhile (a model-service slot starting, a replay, a materialization) can read an empty or
half-written file: ``make year`` saw a new slot's smoke test fail with "Feature service flight_delay_v1 does not
exist" and a reader here got "Wire format was corrupt" within 3 s of rewrites. This store writes a temporary file
beside it and renames it over the registry (``os.replace``, atomic on one filesystem): a reader sees the old
registry or the new one, whole. The embedded profile names it in ``feature_repo/feature_store.yaml``
(``registry_store_type``); the production profile's SQL registry does not need it.
"""

from __future__ import annotations

import os
import uuid

from feast.infra.registry.file import FileRegistryStore
from feast.protos.feast.core.Registry_pb2 import Registry as RegistryProto
from feast.utils import _utc_now


class AtomicFileRegistryStore(FileRegistryStore):
    """``FileRegistryStore`` whose writes replace the file whole (Feast requires the ``RegistryStore`` suffix)."""

    def _write_registry(self, registry_proto: RegistryProto) -> None:
        registry_proto.version_id = str(uuid.uuid4())
        registry_proto.last_updated.FromDatetime(_utc_now())
        self._filepath.parent.mkdir(parents=True, exist_ok=True)
        temporary = self._filepath.with_name(f".{self._filepath.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
        try:
            with open(temporary, mode="wb", buffering=0) as file:
                file.write(registry_proto.SerializeToString())
                os.fsync(file.fileno())
            os.replace(temporary, self._filepath)
        finally:
            temporary.unlink(missing_ok=True)
