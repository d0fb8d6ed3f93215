"""Online reads of a feature service, compiled once: the same values as ``store.get_online_features(...).to_dict()``.

Profile of the stock read of ``flight_delay_v1`` (5 views + a python ODFV) on Redis, 100 flights a call: 45% of
the time converts protos back to Python (``OnlineResponse.to_dict``, run twice: once to build the ODFV's input,
once for the caller), 15% builds ``EntityKey``/``Value`` protos and sorts entities per view, 12% goes to redis-py
packing and parsing the pipeline; the round trip itself is small. For one flight the per-call bookkeeping
dominates (~1.2 ms p50).

:class:`OnlineReader` resolves the service once with Feast's own resolution (``_get_cached_request_context``:
the same views, feature order, join keys and request data as the stock call), then per call:

* encodes each view's entity keys straight to the stored bytes (``online_writer.entity_key_encoder``),
  de-duplicated per view;
* reads every view in one round trip: one Redis pipeline of ``HMGET`` (fields ``mmh3(view:feature)``, as the
  stock store), or one SQLite statement (``UNION ALL`` over the views' tables);
* decodes each stored ``Value`` once per distinct byte string (memoised ``feast_value_type_to_python_type``);
* runs the python-mode ODFVs through ``odfv.transform_dict`` with the same input the stock path builds (request
  data and outputs go through Feast's own proto conversions, so types and rounding are identical).

Anything outside that (other stores, pandas ODFVs, entity names instead of join keys, missing keys, non-string
keys, nested types) goes to the stock ``get_online_features``. ``tests/unit/test_online_reader.py`` compares both.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from pipelines.features.online_writer import Unsupported, entity_key_encoder

if TYPE_CHECKING:
    from feast import FeatureStore

_SCALAR_TYPES = {"INT32", "INT64", "DOUBLE", "FLOAT", "STRING", "BOOL", "BYTES", "UNIX_TIMESTAMP"}
_MEMO_LIMIT = 200_000


class _View:
    """One feature view of the service as the reader uses it."""

    def __init__(self, table: Any, features: list[str], join_keys: list[str], key_types: dict[str, Any],
                 version: int, feature_types: list[Any], memos: dict[Any, dict[bytes, Any]]) -> None:
        self.table = table
        self.name = table.name
        self.features = features
        self.join_keys = join_keys
        self.encode = entity_key_encoder({k: key_types[k] for k in join_keys}, version)
        self.feature_types = feature_types
        # Decoded values per stored byte string, shared by every feature of the same type.
        self.memos = [memos.setdefault(t, {}) for t in feature_types]


class OnlineReader:
    """Reads one feature service for many entity rows; ``read`` returns the stock ``to_dict()`` result."""

    def __init__(self, store: FeatureStore, service_name: str) -> None:
        from feast import utils
        from feast.infra.online_stores.helpers import compute_versioned_name
        from feast.infra.online_stores.redis import RedisOnlineStore, RedisType
        from feast.infra.online_stores.sqlite import SqliteOnlineStore, _table_id
        from feast.value_type import ValueType

        self.store = store
        self.registry_stamp = _registry_stamp(store)
        self.service = store.get_feature_service(service_name, allow_cache=True)
        config = store.config
        (feature_refs, odfvs, entity_name_to_join_key_map, entity_type_map, join_keys_set, grouped_refs,
         requested_result_row_names, needed_request_data, entityless_case) = utils._get_cached_request_context(
            store.registry, store.project, self.service, False)
        if entityless_case:
            raise Unsupported("entityless feature views")
        self.join_keys_set = set(join_keys_set)
        self.entity_names = set(entity_name_to_join_key_map) - self.join_keys_set
        self.entity_type_map = dict(entity_type_map)
        self.request_data = set(needed_request_data)
        self.requested = set(requested_result_row_names)
        version = config.entity_key_serialization_version
        self.views: list[_View] = []
        memos: dict[Any, dict[bytes, Any]] = {}
        for table, requested in grouped_refs:
            if table.projection.join_key_map or getattr(table.projection, "version_tag", None) is not None:
                raise Unsupported(f"projected or versioned view {table.name}")
            join_keys = [entity_name_to_join_key_map[e] for e in table.entities]
            types = {f.name: f.dtype.to_value_type() for f in table.features}
            feature_types = [types[name] for name in requested]
            if any(t.name not in _SCALAR_TYPES for t in feature_types):
                raise Unsupported(f"non-scalar features in {table.name}")
            for key in join_keys:
                if entity_type_map.get(key) not in (ValueType.STRING, ValueType.INT64):
                    raise Unsupported(f"join key {key} of type {entity_type_map.get(key)}")
            self.views.append(_View(table, list(requested), join_keys, entity_type_map, version, feature_types,
                                    memos))
        self.feature_names = [name for view in self.views for name in view.features]
        self.odfvs = []
        for odfv in odfvs:
            if odfv.mode != "python" or odfv.aggregations or odfv.write_to_online_store:
                raise Unsupported(f"on demand feature view {odfv.name} ({odfv.mode})")
            self.odfvs.append((odfv, self._odfv_plan(odfv, feature_refs, odfvs)))
        names = list(self.join_keys_set) + list(self.request_data) + self.feature_names
        if len(names) != len(set(names)):
            raise Unsupported("a column name is used twice")

        online_store = store._get_provider().online_store  # type: ignore[attr-defined]
        versioning = config.registry.enable_online_feature_view_versioning
        if isinstance(online_store, RedisOnlineStore) and config.online_store.redis_type != RedisType.redis_cluster:
            from feast.infra.online_stores.helpers import _mmh3

            self.kind = "redis"
            self.client = online_store._get_client(config.online_store)
            self.project_bytes = config.project.encode("utf-8")
            self.fields = [[_mmh3(f"{compute_versioned_name(v.table, versioning)}:{f}") for f in v.features]
                           for v in self.views]
        elif isinstance(online_store, SqliteOnlineStore):
            self.kind = "sqlite"
            self.conn = online_store._get_conn(config)
            self.tables = [_table_id(config.project, v.table, versioning) for v in self.views]
            self.feature_index = [{f: i for i, f in enumerate(v.features)} for v in self.views]
        else:
            raise Unsupported(f"online store {type(online_store).__name__}")

    # ----------------------------------------------------------------------------------------------------------

    def _odfv_plan(self, odfv: Any, feature_refs: list[str], odfvs: list[Any]) -> tuple[set[str], list[str], dict]:
        """What ``_augment_response_with_on_demand_transforms`` drops from the ODFV's input, which outputs it keeps
        and their declared types."""
        from feast.utils import _parse_feature_ref

        odfv_names = {(o.projection.name_alias if o.projection else None) or o.name for o in odfvs}
        own_name = (odfv.projection.name_alias if odfv.projection else None) or odfv.name
        declared = {p.name for p in odfv.source_feature_view_projections.values()}
        undeclared: set[str] = set()
        outputs = []
        for ref in feature_refs:
            view_name, _, feature = _parse_feature_ref(ref)
            if view_name == own_name:
                outputs.append(feature)
            elif view_name not in odfv_names and view_name not in declared:
                undeclared |= {feature, f"{view_name}__{feature}"}
        for other in odfvs:
            for projection in other.source_feature_view_projections.values():
                if projection.name not in declared:
                    for feature in projection.features:
                        undeclared |= {feature.name, f"{projection.name}__{feature.name}"}
        schema = {f.name: f.dtype.to_value_type() for f in odfv.schema}
        return undeclared, outputs, schema

    def _columns(self, entity_rows: Sequence[Mapping[str, Any]] | Mapping[str, Sequence[Any]]) -> dict[str, list]:
        if isinstance(entity_rows, Mapping):
            return {k: list(v) for k, v in entity_rows.items()}
        rows = list(entity_rows)
        if not rows:
            raise Unsupported("no entity rows")
        keys = list(rows[0])
        if any(list(row) != keys for row in rows):
            raise Unsupported("entity rows with different keys")
        return {k: [row[k] for row in rows] for k in keys}

    def read(self, entity_rows: Sequence[Mapping[str, Any]] | Mapping[str, Sequence[Any]]) -> dict[str, list[Any]]:
        from feast.protos.feast.types.Value_pb2 import Value as ValueProto
        from feast.type_map import feast_value_type_to_python_type, python_values_to_proto_values
        from feast.value_type import ValueType

        columns = self._columns(entity_rows)
        if any(name in self.entity_names for name in columns):
            raise Unsupported("entity names instead of join keys")
        n = len(next(iter(columns.values())))
        if any(len(v) != n for v in columns.values()):
            raise Unsupported("columns of different lengths")
        missing = {k for v in self.views for k in v.join_keys} - set(columns)
        if missing or not self.request_data <= set(columns):
            raise Unsupported(f"missing join keys or request data: {sorted(missing)}")

        # Join keys as the caller passed them, checked to be what the stock conversion would give back unchanged.
        join_columns = {k: v for k, v in columns.items() if k in self.join_keys_set}
        for key, values in join_columns.items():
            kind = self.entity_type_map.get(key)
            if kind == ValueType.STRING:
                if not all(type(x) is str for x in values):
                    raise Unsupported(f"non-string values for {key}")
            elif not all(type(x) is int for x in values):
                raise Unsupported(f"non-integer values for {key}")

        out: dict[str, list[Any]] = {}
        initial: dict[str, list[Any]] = {}
        for key, values in join_columns.items():
            initial[key] = values
        for key in columns:
            if key in self.request_data:
                protos = python_values_to_proto_values(columns[key], self.entity_type_map.get(key, ValueType.UNKNOWN))
                initial[key] = [feast_value_type_to_python_type(p) for p in protos]

        # One round trip for every view's unique entities.
        plans = []
        for view in self.views:
            key_columns = [join_columns[k] for k in view.join_keys]
            rows = list(zip(*key_columns, strict=True))
            unique = list(dict.fromkeys(rows))
            plans.append((rows, unique, [view.encode(r) for r in unique]))
        fetched = self._fetch([p[2] for p in plans])

        for view, (rows, unique, _), stored in zip(self.views, plans, fetched, strict=True):
            position = {r: i for i, r in enumerate(unique)}
            for f_idx, (name, ftype, memo) in enumerate(zip(view.features, view.feature_types, view.memos,
                                                                strict=True)):
                decoded: list[Any] = []
                for entity in stored:
                    raw = entity[f_idx]
                    if not raw:
                        decoded.append(None)
                        continue
                    value = memo.get(raw, memo)
                    if value is memo:
                        if len(memo) > _MEMO_LIMIT:
                            memo.clear()
                        value = memo[raw] = feast_value_type_to_python_type(ValueProto.FromString(raw), ftype)
                    decoded.append(value)
                initial[name] = decoded if len(unique) == len(rows) else [decoded[position[r]] for r in rows]

        for odfv, (undeclared, outputs, schema) in self.odfvs:
            inputs = {k: v for k, v in initial.items() if k not in undeclared}
            transformed = _transform_dict(odfv, inputs)
            for name in transformed:
                if name in outputs:
                    vector = transformed[name]
                    vector = vector if isinstance(vector, list) else [vector]
                    declared = schema.get(name, ValueType.UNKNOWN)
                    if _round_trips(vector, declared):
                        out[name] = list(vector)
                    else:
                        protos = python_values_to_proto_values(vector, declared)
                        out[name] = [feast_value_type_to_python_type(p) for p in protos]

        result = {k: v for k, v in initial.items() if k in self.requested or k in join_columns}
        result.update(out)
        return result

    def _fetch(self, keys_per_view: list[list[bytes]]) -> list[list[Any]]:
        """Stored value bytes per view, entity and requested feature (None when absent)."""
        if self.kind == "redis":
            project = self.project_bytes
            with self.client.pipeline(transaction=False) as pipe:
                for keys, fields in zip(keys_per_view, self.fields, strict=True):
                    for key in keys:
                        pipe.execute_command("HMGET", key + project, *fields)
                replies = pipe.execute()
            out, at = [], 0
            for keys in keys_per_view:
                out.append(replies[at: at + len(keys)])
                at += len(keys)
            return out
        # SQLite: one statement over every view's table, each stored value put straight into its entity's row.
        result: list[list[Any]] = [[[None] * len(index) for _ in keys]
                                   for keys, index in zip(keys_per_view, self.feature_index, strict=True)]
        rows = {(i, key): row for i, (keys, view_rows) in enumerate(zip(keys_per_view, result, strict=True))
                for key, row in zip(keys, view_rows, strict=True)}
        if rows:
            statement = _union_statement(tuple(self.tables), tuple(len(keys) for keys in keys_per_view))
            params = [key for keys in keys_per_view for key in keys]
            for view_idx, key, feature, value in self.conn.execute(statement, params):
                position = self.feature_index[view_idx].get(feature)
                if position is not None:  # the table holds features the service does not ask for
                    rows[(view_idx, key)][position] = value
        return result


@functools.lru_cache(maxsize=256)
def _union_statement(tables: tuple[str, ...], counts: tuple[int, ...]) -> str:
    """The SQLite read of ``counts[i]`` entity keys from each table ``tables[i]``, tagged with the view's index."""
    # bandit B608: quoted table ids of our views; keys are bound
    return " UNION ALL ".join(f'SELECT {i}, entity_key, feature_name, value FROM "{table}" '  # nosec B608
                              f"WHERE entity_key IN ({','.join('?' * count)})"
                              for i, (table, count) in enumerate(zip(tables, counts, strict=True)) if count)


def _transform_dict(odfv: Any, feature_dict: dict[str, Any]) -> dict[str, Any]:
    """``OnDemandFeatureView.transform_dict`` without typeguard's per-call argument checks (a third of a one-flight
    read): the same name completion for source views, the same UDF call, the same clean-up."""
    preprocessed = dict(feature_dict)
    cleanup = []
    for projection in odfv.source_feature_view_projections.values():
        for feature in projection.features:
            full = f"{projection.name}__{feature.name}"
            if full in feature_dict:
                preprocessed[feature.name] = feature_dict[full]
                cleanup.append(feature.name)
            elif feature.name in feature_dict:
                preprocessed[full] = feature_dict[feature.name]
                cleanup.append(full)
    transformation = odfv.feature_transformation
    if odfv.singleton and odfv.mode == "python":
        output = transformation.transform_singleton(preprocessed)
    else:
        output = transformation.transform(preprocessed)
    for name in cleanup:
        output.pop(name, None)
    return output


def _round_trips(values: list[Any], value_type: Any) -> bool:
    """Whether Feast's proto round trip (python -> ``Value`` -> python) returns ``values`` unchanged: plain ints in
    int64 range for INT64, plain non-NaN floats for DOUBLE, str for STRING."""
    from feast.value_type import ValueType

    if value_type == ValueType.INT64:
        return all(type(v) is int and -(2**63) <= v < 2**63 for v in values)
    if value_type == ValueType.DOUBLE:
        return all(type(v) is float and v == v for v in values)
    if value_type == ValueType.STRING:
        return all(type(v) is str for v in values)
    return False


def _registry_stamp(store: FeatureStore) -> Any:
    return getattr(store.registry, "cached_registry_proto_created", None)


def reader_for(store: FeatureStore, service_name: str) -> OnlineReader | None:
    """The store's compiled reader of ``service_name`` (rebuilt when the registry cache is refreshed), or None when
    the service or store is outside what :class:`OnlineReader` covers."""
    readers: dict[str, OnlineReader | None] = store.__dict__.setdefault("_pipelines_online_readers", {})
    reader = readers.get(service_name)
    if reader is not None and reader.registry_stamp == _registry_stamp(store):
        return reader
    if service_name in readers and reader is None:
        return None
    try:
        reader = OnlineReader(store, service_name)
    except Unsupported:
        reader = None
    readers[service_name] = reader
    return reader


def read_online(store: FeatureStore, service_name: str,
                entity_rows: Sequence[Mapping[str, Any]] | Mapping[str, Sequence[Any]]) -> dict[str, list[Any]]:
    """``store.get_online_features(features=service, entity_rows=...).to_dict()``, through the compiled reader when
    it covers the request."""
    reader = reader_for(store, service_name)
    if reader is not None:
        try:
            return reader.read(entity_rows)
        except Unsupported:
            pass
    service = store.get_feature_service(service_name, allow_cache=True)
    rows: Any = entity_rows
    return store.get_online_features(features=service, entity_rows=rows).to_dict()

