"""parse_feed_csv on tiny hand-written feed files: typed by schema, bad fields flagged, never raising."""

from __future__ import annotations

import pandas as pd
import pytest

from pipelines.ingest.parse import ENCODING, FIELD_COUNT, parse_feed_csv
from pipelines.ingest.schemas import FLIGHTS, PANDAS_DTYPES, PARSE_ERRORS, WEATHER

FLIGHTS_HEADER = ",".join(FLIGHTS.columns)
FLIGHT_ROW = "2013,1,2,542,540,2,923,850,33,AA,1141,N619AA,JFK,MIA,160,1089,5,40,2013-01-02T10:00:00Z"
WEATHER_HEADER = ",".join(WEATHER.columns)
WEATHER_ROW = "EWR,2013,1,2,1,33.08,12.92,42.47,300,12.65858,NA,0,1024.6,10,2013-01-02T06:00:00Z"


def _csv(*lines: str) -> bytes:
    return ("\n".join(lines) + "\n").encode("utf-8")


def _errors(frame: pd.DataFrame) -> list[str | None]:
    return frame[PARSE_ERRORS].tolist()


def test_clean_flights_row_is_typed_by_schema() -> None:
    """Every schema column gets its pandas dtype; _parse_errors is a null text column."""
    frame = parse_feed_csv(_csv(FLIGHTS_HEADER, FLIGHT_ROW), FLIGHTS)

    assert list(frame.columns) == [*FLIGHTS.columns, PARSE_ERRORS]
    assert {c: str(t) for c, t in frame.dtypes.items() if c != PARSE_ERRORS} == FLIGHTS.dtypes
    assert frame[PARSE_ERRORS].dtype == object
    assert _errors(frame) == [None]
    row = frame.iloc[0]
    assert row["flight"] == 1141 and row["dep_time"] == 542
    assert row["dep_delay"] == 2.0 and row["distance"] == 1089.0
    assert row["carrier"] == "AA" and row["tailnum"] == "N619AA"
    assert row["time_hour"] == pd.Timestamp("2013-01-02 10:00:00", tz="UTC")


def test_dtype_names_match_the_schema_kinds() -> None:
    """The four kinds map to Int64, float64, object and datetime64[ns, UTC]."""
    frame = parse_feed_csv(_csv(WEATHER_HEADER, WEATHER_ROW), WEATHER)

    for column, kind in WEATHER.columns.items():
        assert str(frame[column].dtype) == PANDAS_DTYPES[kind], column
    assert str(frame["year"].dtype) == "Int64"
    assert str(frame["temp"].dtype) == "float64"
    assert str(frame["origin"].dtype) == "object"
    assert str(frame["time_hour"].dtype) == "datetime64[ns, UTC]"


@pytest.mark.parametrize("token", ["", "NA", "NaN", "nan", "NULL", "null", "  NA  "])
def test_null_tokens_become_nulls_without_errors(token: str) -> None:
    """Missing values of every kind are nulls, not parse errors."""
    row = f"EWR,{token},1,2,1,{token},12.92,42.47,300,12.6,{token},0,1024.6,10,{token}"
    frame = parse_feed_csv(_csv(WEATHER_HEADER, row), WEATHER)

    assert _errors(frame) == [None]
    assert frame["year"].isna().all() and str(frame["year"].dtype) == "Int64"
    assert frame["temp"].isna().all() and str(frame["temp"].dtype) == "float64"
    assert frame["wind_gust"].isna().all()
    assert frame["time_hour"].isna().all() and str(frame["time_hour"].dtype) == "datetime64[ns, UTC]"


def test_null_text_field_is_none() -> None:
    row = FLIGHT_ROW.replace("N619AA", "NA")
    frame = parse_feed_csv(_csv(FLIGHTS_HEADER, row), FLIGHTS)

    assert frame["tailnum"].iloc[0] is None
    assert _errors(frame) == [None]


def test_garbage_numeric_is_null_and_named_in_parse_errors() -> None:
    """A value that is not a number becomes null; the row names the column; other rows are untouched."""
    bad = FLIGHT_ROW.replace(",1141,", ",eleven,").replace(",160,", ",1h40,")
    frame = parse_feed_csv(_csv(FLIGHTS_HEADER, FLIGHT_ROW, bad), FLIGHTS)

    assert _errors(frame) == [None, "flight,air_time"]
    assert frame["flight"].tolist() == [1141, pd.NA]
    assert pd.isna(frame["air_time"].iloc[1])
    assert frame["carrier"].tolist() == ["AA", "AA"]


def test_garbage_timestamp_is_named_in_parse_errors() -> None:
    bad = WEATHER_ROW.replace("2013-01-02T06:00:00Z", "yesterday at six")
    frame = parse_feed_csv(_csv(WEATHER_HEADER, bad), WEATHER)

    assert _errors(frame) == ["time_hour"]
    assert frame["time_hour"].isna().all()


@pytest.mark.parametrize("value", ["1.5", "inf", "-inf", "1e400"])
def test_non_integral_value_in_int_column_is_an_error(value: str) -> None:
    """Int columns never round or overflow silently: the field is null and flagged."""
    bad = WEATHER_ROW.replace("EWR,2013,1,2,1,", f"EWR,2013,1,2,{value},")
    frame = parse_feed_csv(_csv(WEATHER_HEADER, bad), WEATHER)

    assert _errors(frame) == ["hour"]
    assert frame["hour"].isna().all() and str(frame["hour"].dtype) == "Int64"


@pytest.mark.parametrize(("value", "expected"), [("7.0", 7), ("7", 7), (" 7 ", 7), ("-3", -3), ("1e3", 1000)])
def test_integral_spellings_in_int_column_are_accepted(value: str, expected: int) -> None:
    bad = WEATHER_ROW.replace("EWR,2013,1,2,1,", f"EWR,2013,1,2,{value},")
    frame = parse_feed_csv(_csv(WEATHER_HEADER, bad), WEATHER)

    assert _errors(frame) == [None]
    assert frame["hour"].tolist() == [expected]


def test_short_row_is_padded_with_nulls_and_flagged() -> None:
    """A row missing its tail (e.g. a truncated transfer) keeps what it has and says so."""
    short = ",".join(FLIGHT_ROW.split(",")[:10])
    frame = parse_feed_csv(_csv(FLIGHTS_HEADER, FLIGHT_ROW, short), FLIGHTS)

    assert _errors(frame) == [None, FIELD_COUNT]
    assert frame["carrier"].tolist() == ["AA", "AA"]
    assert frame[["flight", "tailnum", "time_hour"]].iloc[1].isna().all()


def test_long_row_is_cut_to_the_header_and_flagged() -> None:
    frame = parse_feed_csv(_csv(FLIGHTS_HEADER, FLIGHT_ROW + ",surplus,fields"), FLIGHTS)

    assert _errors(frame) == [FIELD_COUNT]
    assert list(frame.columns) == [*FLIGHTS.columns, PARSE_ERRORS]
    assert frame["time_hour"].iloc[0] == pd.Timestamp("2013-01-02 10:00:00", tz="UTC")


def test_field_count_and_bad_value_are_both_recorded() -> None:
    short = "EWR,twenty,1"
    frame = parse_feed_csv(_csv(WEATHER_HEADER, short), WEATHER)

    assert _errors(frame) == [f"{FIELD_COUNT},year"]


def test_cp1252_bytes_are_flagged_as_encoding_and_kept() -> None:
    """A non-UTF-8 byte flags its row only; the text survives with a replacement character."""
    content = _csv(WEATHER_HEADER, WEATHER_ROW) + WEATHER_ROW.replace("EWR", "Jé").encode("cp1252") + b"\n"
    frame = parse_feed_csv(content, WEATHER)

    assert _errors(frame) == [None, ENCODING]
    assert frame["origin"].tolist() == ["EWR", "J\ufffd"]
    assert frame["year"].tolist() == [2013, 2013]


def test_utf16_file_is_flagged_as_encoding_without_raising() -> None:
    """A UTF-16 export is unreadable as UTF-8: every row says <encoding>, nothing raises."""
    content = "\n".join([WEATHER_HEADER, WEATHER_ROW, WEATHER_ROW]).encode("utf-16")
    frame = parse_feed_csv(content, WEATHER)

    assert len(frame) >= 2
    assert all(ENCODING in (errors or "").split(",") for errors in _errors(frame))


def test_utf8_bom_is_not_part_of_the_first_column_name() -> None:
    frame = parse_feed_csv(b"\xef\xbb\xbf" + _csv(WEATHER_HEADER, WEATHER_ROW), WEATHER)

    assert list(frame.columns) == [*WEATHER.columns, PARSE_ERRORS]
    assert _errors(frame) == [None]


def test_utf8_bom_with_a_bad_byte_later_still_names_first_column() -> None:
    content = b"\xef\xbb\xbf" + _csv(WEATHER_HEADER) + WEATHER_ROW.replace("EWR", "Jé").encode("cp1252") + b"\n"
    frame = parse_feed_csv(content, WEATHER)

    assert "origin" in frame.columns
    assert _errors(frame) == [ENCODING]


def test_encoding_error_after_a_multiline_quoted_field_is_flagged() -> None:
    content = b'origin,year\n"E\nWR",2013\nJ\xe9K,2013\n'
    frame = parse_feed_csv(content, WEATHER)

    assert _errors(frame) == [None, ENCODING]


def test_empty_bytes_give_an_empty_frame() -> None:
    frame = parse_feed_csv(b"", FLIGHTS)

    assert len(frame) == 0
    assert list(frame.columns) == [PARSE_ERRORS]


def test_header_only_file_gives_empty_typed_frame() -> None:
    """A day without records (the feed sends a header only) is an empty frame with the schema's dtypes."""
    frame = parse_feed_csv(_csv(WEATHER_HEADER), WEATHER)

    assert len(frame) == 0
    assert {c: str(t) for c, t in frame.dtypes.items() if c != PARSE_ERRORS} == WEATHER.dtypes


def test_unknown_columns_are_kept_as_text() -> None:
    """A column the schema does not know is kept, as text, with nulls for null tokens, and is never an error."""
    frame = parse_feed_csv(_csv(WEATHER_HEADER + ",station_note,extra_num", WEATHER_ROW + ",calm,NA"), WEATHER)

    assert frame["station_note"].tolist() == ["calm"]
    assert frame["extra_num"].tolist() == [None]
    assert frame["station_note"].dtype == object
    assert _errors(frame) == [None]


def test_unknown_numeric_looking_column_stays_text() -> None:
    frame = parse_feed_csv(_csv("origin,gate", "EWR,42"), WEATHER)

    assert frame["gate"].tolist() == ["42"]


def test_missing_schema_columns_are_simply_absent() -> None:
    """Ingestion does not invent columns; validation judges the schema."""
    frame = parse_feed_csv(_csv("origin,year", "JFK,2013"), WEATHER)

    assert list(frame.columns) == ["origin", "year", PARSE_ERRORS]
    assert str(frame["year"].dtype) == "Int64"


def test_duplicate_header_names_are_disambiguated() -> None:
    """A repeated name gets a .N suffix; the first keeps its name and type, the copies are text."""
    frame = parse_feed_csv(_csv("origin,year,year,origin", "EWR,2013,2014,JFK"), WEATHER)

    assert list(frame.columns) == ["origin", "year", "year.1", "origin.1", PARSE_ERRORS]
    assert frame["year"].tolist() == [2013] and str(frame["year"].dtype) == "Int64"
    assert frame["year.1"].tolist() == ["2014"]
    assert frame["origin.1"].tolist() == ["JFK"]


def test_duplicate_header_names_never_collide_with_existing_names() -> None:
    frame = parse_feed_csv(_csv("a,a.1,a", "1,2,3"), WEATHER)

    assert len(set(frame.columns)) == len(frame.columns) == 4
    assert sorted(frame.drop(columns=PARSE_ERRORS).iloc[0].tolist()) == ["1", "2", "3"]


def test_header_names_and_values_are_stripped() -> None:
    frame = parse_feed_csv(_csv(" origin , year ", "  LGA , 2013 "), WEATHER)

    assert list(frame.columns) == ["origin", "year", PARSE_ERRORS]
    assert frame["origin"].tolist() == ["LGA"] and frame["year"].tolist() == [2013]


def test_quoted_fields_with_commas_are_one_field() -> None:
    frame = parse_feed_csv(_csv("origin,comment", 'EWR,"late, then cancelled"'), WEATHER)

    assert frame["comment"].tolist() == ["late, then cancelled"]
    assert _errors(frame) == [None]


def test_crlf_line_endings_parse_like_lf() -> None:
    lf = parse_feed_csv(_csv(WEATHER_HEADER, WEATHER_ROW), WEATHER)
    crlf = parse_feed_csv(_csv(WEATHER_HEADER, WEATHER_ROW).replace(b"\n", b"\r\n"), WEATHER)

    pd.testing.assert_frame_equal(lf, crlf)


def test_rows_keep_their_order_and_count() -> None:
    rows = [WEATHER_ROW.replace("EWR,2013,1,2,1,", f"EWR,2013,1,2,{h},") for h in range(5)]
    frame = parse_feed_csv(_csv(WEATHER_HEADER, *rows), WEATHER)

    assert frame["hour"].tolist() == [0, 1, 2, 3, 4]
    assert frame.index.tolist() == [0, 1, 2, 3, 4]
