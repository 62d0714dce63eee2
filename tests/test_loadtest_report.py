"""The load generator's accounting: what counts as lost, duplicated and out of order."""

from __future__ import annotations

import numpy as np

from loadtest.report import (
    Correctness,
    Counters,
    LiveHistogram,
    SeqCheck,
    Window,
    build_report,
)


def stream(seqs: list[int], last_seq: int | None = 10) -> SeqCheck:
    check = SeqCheck()
    check.subscribed(last_seq)
    for seq in seqs:
        check.add(seq)
    return check


def totals(check: SeqCheck, last_acked: int) -> Correctness:
    correctness = Correctness()
    correctness.add_stream(check, last_acked)
    return correctness


def test_a_complete_stream_is_clean() -> None:
    assert totals(stream([11, 12, 13, 14]), last_acked=14) == Correctness(
        streams=1, received=4, lost=0, duplicated=0, out_of_order=0
    )


def test_it_counts_a_hole_as_lost() -> None:
    result = totals(stream([11, 12, 14]), last_acked=14)
    assert (result.lost, result.duplicated, result.out_of_order) == (1, 0, 0)


def test_it_counts_acknowledged_seqs_that_never_arrived_as_lost() -> None:
    result = totals(stream([11, 12]), last_acked=15)
    assert (result.lost, result.duplicated, result.out_of_order) == (3, 0, 0)


def test_it_tells_skipped_seqs_from_missing_tail() -> None:
    result = totals(stream([11, 13]), last_acked=15)  # 12 skipped; 14 and 15 maybe only late
    assert (result.lost, result.lost_at_end) == (3, 2)


def test_it_counts_the_first_seq_after_subscribing_when_it_is_missing() -> None:
    # subscribed.last_seq was 10: seq 11 belongs to the stream even though it never came.
    result = totals(stream([12, 13]), last_acked=13)
    assert result.lost == 1


def test_it_counts_a_duplicate() -> None:
    result = totals(stream([11, 12, 12, 13]), last_acked=13)
    assert (result.lost, result.duplicated, result.out_of_order) == (0, 1, 0)


def test_it_counts_a_reorder_once_and_loses_nothing() -> None:
    result = totals(stream([11, 13, 12, 14]), last_acked=14)
    assert (result.lost, result.duplicated, result.out_of_order) == (0, 0, 1)


def test_a_seq_at_or_below_the_subscription_point_is_out_of_order() -> None:
    result = totals(stream([11, 9, 12]), last_acked=12)
    assert (result.lost, result.duplicated, result.out_of_order) == (0, 0, 1)


def test_it_tells_loss_duplicate_and_reorder_apart_in_one_stream() -> None:
    # 13 is lost, 12 is duplicated, 15 arrives after 16.
    result = totals(stream([11, 12, 12, 14, 16, 15, 17]), last_acked=17)
    assert (result.lost, result.duplicated, result.out_of_order) == (1, 1, 1)


def test_without_last_seq_the_first_seq_seen_starts_the_stream() -> None:
    result = totals(stream([5, 6, 8], last_seq=None), last_acked=8)
    assert (result.lost, result.received) == (1, 3)


def test_a_stream_that_never_subscribed_is_not_judged() -> None:
    assert SeqCheck().lost(last_acked=50) == 0


def test_streams_add_up() -> None:
    total = totals(stream([11, 13]), last_acked=13)
    total.merge(totals(stream([11, 11, 12, 13]), last_acked=13))
    assert (total.streams, total.lost, total.duplicated) == (2, 1, 1)


def report(correctness: Correctness, counters: Counters | None = None) -> dict[str, object]:
    latency_us = np.array([1_000, 2_000, 3_000, 50_000], dtype=np.int64)
    recv_ms = np.array([1_500, 1_600, 2_500, 2_600], dtype=np.int64)
    return build_report(
        config={},
        counters=counters or Counters(connections=2, sent=4, acked=4, delivered=4),
        correctness=correctness,
        window=Window(publish_start=1.0, measure_start=1.0, publish_end=3.0),
        recv_ms=recv_ms,
        latency_us=latency_us,
        ack_us=np.array([500], dtype=np.int64),
        connect_us=np.array([700, 800], dtype=np.int64),
        attempted=2,
        failures={},
        aborted=None,
        started_at="2026-01-01T00:00:00+00:00",
        elapsed=4.0,
    )


def test_a_clean_run_is_ok_and_reports_rate_and_latency() -> None:
    result = report(Correctness(streams=2, received=4))
    assert result["ok"] is True
    assert result["delivery"]["deliveries_per_s"] == 2.0  # type: ignore[index]
    assert result["delivery"]["latency_ms"]["max"] == 50.0  # type: ignore[index]


def test_a_run_that_lost_a_message_fails() -> None:
    result = report(Correctness(streams=2, received=4, lost=1))
    assert result["ok"] is False
    assert result["problems"] == ["1 messages lost"]


def test_the_report_says_when_the_lost_ones_may_only_be_late() -> None:
    result = report(Correctness(streams=2, received=4, lost=2, lost_at_end=2))
    assert "maybe only later than --drain" in result["problems"][0]  # type: ignore[index]


def test_a_run_with_refused_connections_fails() -> None:
    counters = Counters(connections=1, failed=1, sent=4, acked=4, delivered=4)
    result = report(Correctness(streams=1, received=4), counters)
    assert result["ok"] is False


def test_the_live_histogram_gives_p99_within_its_bucket_width() -> None:
    hist = LiveHistogram()
    hist.add(np.arange(1, 10_001, dtype=np.int64) * 10)  # 10 us .. 100 ms, uniformly
    p99 = hist.percentile_ms(99)
    assert p99 is not None
    assert abs(p99 - 99.0) / 99.0 < 0.03
