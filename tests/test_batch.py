"""Batching captured WAL transactions: each page once at its last version, whole transactions per batch."""

from __future__ import annotations

from collections.abc import Sequence

from hypothesis import given
from hypothesis import strategies as st

from replicator.batch import MAX_BATCH_BYTES, plan_batch, split_batches
from replicator.wal import Transaction


def tx(first_frame: int, pgnos: Sequence[int], db_size: int) -> Transaction:
    return Transaction(first_frame, tuple(pgnos), db_size, (0, 0))


def chain(*writes: tuple[Sequence[int], int]) -> list[Transaction]:
    """Consecutive transactions from frame 0, each given as (pgnos in WAL order, db size after commit)."""
    result = []
    frame = 0
    for pgnos, db_size in writes:
        result.append(tx(frame, pgnos, db_size))
        frame += len(pgnos)
    return result


# -- plan_batch -----------------------------------------------------------------------------------------


def test_single_transaction_lists_each_page_sorted_with_its_frame() -> None:
    plan = plan_batch(chain(((3, 1, 2), 3)))
    assert plan.pgnos == (1, 2, 3)
    assert plan.frames == (1, 2, 0)


def test_frames_are_numbered_from_the_transactions_first_frame() -> None:
    plan = plan_batch([tx(100, (2, 1), 2)])
    assert plan.frames == (101, 100)


def test_page_written_twice_in_one_transaction_takes_its_last_frame() -> None:
    plan = plan_batch(chain(((1, 2, 1), 2)))
    assert dict(zip(plan.pgnos, plan.frames, strict=True)) == {1: 2, 2: 1}


def test_page_written_by_several_transactions_takes_the_last_ones_frame() -> None:
    plan = plan_batch(chain(((1, 2), 2), ((2,), 2), ((3, 2), 3)))
    assert dict(zip(plan.pgnos, plan.frames, strict=True)) == {1: 0, 2: 4, 3: 3}


def test_pages_beyond_the_final_db_size_are_dropped() -> None:
    plan = plan_batch(chain(((1, 2, 3, 4, 5), 5), ((1,), 3)))
    assert plan.pgnos == (1, 2, 3)
    assert plan.frames == (5, 1, 2)


def test_db_size_is_the_last_transactions_even_when_it_shrank() -> None:
    assert plan_batch(chain(((1, 2, 3), 3), ((1,), 1))).db_size == 1


def test_page_beyond_an_intermediate_size_is_kept_if_within_the_final_size() -> None:
    # As SQLite reads it: the WAL's newest frame of a page counts while the page is inside the database.
    plan = plan_batch(chain(((1, 5), 5), ((1,), 3), ((6,), 6)))
    assert dict(zip(plan.pgnos, plan.frames, strict=True)) == {1: 2, 5: 1, 6: 3}


def test_plan_counts_the_transactions_folded_into_it() -> None:
    assert plan_batch(chain(((1,), 1), ((1,), 1), ((2,), 2))).transactions == 3


@st.composite
def transaction_runs(draw: st.DrawFn) -> list[Transaction]:
    writes = draw(
        st.lists(
            st.tuples(st.lists(st.integers(1, 12), min_size=1, max_size=6), st.integers(1, 12)),
            min_size=1,
            max_size=8,
        )
    )
    return chain(*writes)


@given(transaction_runs())
def test_every_surviving_page_comes_from_its_newest_frame(transactions: list[Transaction]) -> None:
    page_of_frame = {t.first_frame + i: p for t in transactions for i, p in enumerate(t.pgnos)}
    plan = plan_batch(transactions)
    final_size = transactions[-1].db_size
    assert plan.db_size == final_size
    assert list(plan.pgnos) == sorted(set(plan.pgnos))
    assert set(plan.pgnos) == {p for p in page_of_frame.values() if p <= final_size}
    for pgno, frame in zip(plan.pgnos, plan.frames, strict=True):
        assert page_of_frame[frame] == pgno
        assert all(p != pgno for f, p in page_of_frame.items() if f > frame), f"page {pgno} has a newer frame"


# -- split_batches --------------------------------------------------------------------------------------

QUARTER = MAX_BATCH_BYTES // 4  # a frame size that fits exactly four frames in a batch


def sized(*frame_counts: int) -> list[Transaction]:
    """Consecutive transactions of the given frame counts (page numbers are irrelevant to splitting)."""
    return chain(*(((1,) * n, 1) for n in frame_counts))


def split(transactions: list[Transaction], frame_size: int) -> list[list[Transaction]]:
    return [list(batch) for batch in split_batches(transactions, frame_size)]


def test_no_transactions_make_no_batches() -> None:
    assert split([], QUARTER) == []


def test_small_transactions_share_one_batch() -> None:
    transactions = sized(1, 2, 3)
    assert split(transactions, 4096) == [transactions]


def test_batch_may_fill_exactly_to_the_limit() -> None:
    transactions = sized(1, 1, 1, 1)
    assert split(transactions, QUARTER) == [transactions]


def test_transaction_that_would_cross_the_limit_starts_the_next_batch() -> None:
    transactions = sized(1, 1, 1, 2)
    assert split(transactions, QUARTER) == [transactions[:3], transactions[3:]]


def test_transaction_larger_than_the_limit_travels_alone() -> None:
    transactions = sized(1, 5, 1)
    assert split(transactions, QUARTER) == [transactions[:1], transactions[1:2], transactions[2:]]


def test_first_transaction_larger_than_the_limit_is_not_preceded_by_an_empty_batch() -> None:
    transactions = sized(9)
    assert split(transactions, QUARTER) == [transactions]


@given(st.lists(st.integers(1, 12), max_size=20))
def test_batches_are_greedy_runs_of_whole_transactions_under_the_limit(frame_counts: list[int]) -> None:
    frame_size = MAX_BATCH_BYTES // 8
    transactions = sized(*frame_counts)
    batches = split(transactions, frame_size)

    def size(batch: list[Transaction]) -> int:
        return sum(t.frame_count for t in batch) * frame_size

    assert [t for batch in batches for t in batch] == transactions
    for i, batch in enumerate(batches):
        assert batch, "empty batch"
        assert len(batch) == 1 or size(batch) <= MAX_BATCH_BYTES
        if i + 1 < len(batches):
            assert size(batch) + size(batches[i + 1][:1]) > MAX_BATCH_BYTES, "batch cut before it was full"
