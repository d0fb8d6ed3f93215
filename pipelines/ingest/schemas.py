"""Typed schemas of the daily feed tables, shared by ingestion, promotion and tests.

Integer columns use pandas' nullable ``Int64`` so a bad or missing value survives ingestion as a null (and is
then judged by validation) instead of silently turning the whole column into floats.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Kind = Literal["int", "float", "str", "timestamp"]

PANDAS_DTYPES: dict[Kind, str] = {
    "int": "Int64",
    "float": "float64",
    "str": "object",
    "timestamp": "datetime64[ns, UTC]",
}

# Column written by ingestion: the names of the fields of a row that could not be read (null when the row is clean).
PARSE_ERRORS = "_parse_errors"


@dataclass(frozen=True)
class TableSchema:
    name: str
    columns: dict[str, Kind]
    keys: tuple[str, ...]

    @property
    def dtypes(self) -> dict[str, str]:
        return {column: PANDAS_DTYPES[kind] for column, kind in self.columns.items()}


FLIGHTS = TableSchema(
    name="flights",
    columns={
        "year": "int",
        "month": "int",
        "day": "int",
        "dep_time": "int",
        "sched_dep_time": "int",
        "dep_delay": "float",
        "arr_time": "int",
        "sched_arr_time": "int",
        "arr_delay": "float",
        "carrier": "str",
        "flight": "int",
        "tailnum": "str",
        "origin": "str",
        "dest": "str",
        "air_time": "float",
        "distance": "float",
        "hour": "int",
        "minute": "int",
        "time_hour": "timestamp",
    },
    keys=("carrier", "flight", "origin"),
)

WEATHER = TableSchema(
    name="weather",
    columns={
        "origin": "str",
        "year": "int",
        "month": "int",
        "day": "int",
        "hour": "int",
        "temp": "float",
        "dewp": "float",
        "humid": "float",
        "wind_dir": "float",
        "wind_speed": "float",
        "wind_gust": "float",
        "precip": "float",
        "pressure": "float",
        "visib": "float",
        "time_hour": "timestamp",
    },
    keys=("origin", "time_hour"),
)

TABLES: dict[str, TableSchema] = {FLIGHTS.name: FLIGHTS, WEATHER.name: WEATHER}


def table_schema(name: str) -> TableSchema:
    try:
        return TABLES[name]
    except KeyError:
        raise ValueError(f"unknown table {name!r}; expected one of {', '.join(TABLES)}") from None
