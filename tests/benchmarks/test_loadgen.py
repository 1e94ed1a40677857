"""The load generator's pure parts: latency percentiles, HTTP/1.1 response framing."""

from __future__ import annotations

import math

import pytest

from benchmarks.loadgen import parse_response, summarize_latencies


def test_summarize_latencies_hand_values() -> None:
    stats = summarize_latencies([0.001, 0.002, 0.003, 0.004])
    assert stats["p50_ms"] == pytest.approx(2.5)
    assert stats["p99_ms"] == pytest.approx(3.97)
    assert stats["max_ms"] == pytest.approx(4.0)
    assert stats["mean_ms"] == pytest.approx(2.5)


def test_summarize_latencies_empty_is_nan_not_fast() -> None:
    assert all(math.isnan(v) for v in summarize_latencies([]).values())


def test_parse_response_content_length_and_incomplete() -> None:
    raw = b"HTTP/1.1 202 Accepted\r\nContent-Length: 5\r\n\r\nhello"
    assert parse_response(bytearray(raw[:-1])) is None
    assert parse_response(bytearray(raw + b"HTTP/1.1")) == (202, "", len(raw))


def test_parse_response_chunked_with_fallback_header() -> None:
    raw = (
        b"HTTP/1.1 200 OK\r\nX-Skiprec-Fallback: cold-start\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    )
    assert parse_response(bytearray(raw[:-2])) is None
    assert parse_response(bytearray(raw)) == (200, "cold-start", len(raw))
