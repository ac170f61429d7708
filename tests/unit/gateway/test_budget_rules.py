"""Budget rules: a busy account's requests are drawn from one hold, never beyond it,
and a budget closes only once every draw gave back."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.gateway.domain.budgets import Budget, BudgetBook, BudgetPolicy
from tokenforge.money import Bucket

KEY = ("acct-1", Bucket.CREDIT)
POLICY = BudgetPolicy(
    requests=4, busy_within_s=1.0, idle_s=1.0, max_age_s=30.0, lean_s=10.0, finish_margin_s=120
)


def book_with_budget(amount: int = 400, now: float = 0.0) -> tuple[BudgetBook, Budget]:
    book = BudgetBook(POLICY)
    return book, book.opened(KEY, "hold-1", "budget-1", amount, now, ttl_s=600)


def test_an_account_is_busy_from_its_second_request_within_the_window() -> None:
    book = BudgetBook(POLICY)
    assert not book.wants_budget(KEY, 0.0)  # first request: holds for itself
    assert book.wants_budget(KEY, 0.5)
    assert not book.wants_budget(KEY, 2.0)  # 1.5 s after the previous one: not busy
    assert not BudgetBook(BudgetPolicy(requests=0)).wants_budget(KEY, 0.0)


def test_after_a_refusal_the_account_goes_hold_by_hold_for_a_while() -> None:
    book, budget = book_with_budget()
    book.wants_budget(KEY, 0.0)
    book.refused(KEY, 0.1)
    assert budget.retired and book.draw(KEY, 10, 0.2) is None
    assert not book.wants_budget(KEY, 0.3)
    assert not book.wants_budget(KEY, 9.5)
    assert book.wants_budget(KEY, 10.2)  # lean time over, and busy


def test_draws_take_worst_cases_and_give_back_charges() -> None:
    book, budget = book_with_budget(400)
    assert book.draw(KEY, 150, 0.0) is budget
    assert book.draw(KEY, 150, 0.0) is budget
    assert budget.room == 100
    budget.give_back(150, 40, 0.1)
    assert (budget.reserved, budget.spent, budget.draws, budget.room) == (150, 40, 1, 210)


def test_a_budget_too_small_for_the_request_is_retired_and_none_is_drawn() -> None:
    book, budget = book_with_budget(100)
    assert book.draw(KEY, 150, 0.0) is None
    assert budget.retired


def test_a_budget_takes_only_requests_it_outlives_with_the_finish_margin() -> None:
    book = BudgetBook(POLICY)
    assert book.ttl_for(250) == 30 + 250 + 120 + 1
    budget = book.opened(KEY, "hold-1", "budget-1", 400, 0.0, book.ttl_for(250))
    assert book.draw(KEY, 10, 20.0, request_ttl_s=250) is budget
    fresh = book.opened(KEY, "hold-2", "budget-2", 400, 20.0, book.ttl_for(290))
    # A request that may run longer than the first budget's hold leaves it behind.
    assert book.draw(KEY, 10, 21.0, request_ttl_s=290) is fresh
    assert budget.retired and not fresh.retired


def test_a_charge_above_the_worst_case_or_an_extra_give_back_is_refused() -> None:
    _, budget = book_with_budget(400)
    budget.take(100, 0.0)
    with pytest.raises(ValueError):
        budget.give_back(100, 101, 0.1)
    budget.give_back(100, 100, 0.1)
    with pytest.raises(ValueError):
        budget.give_back(100, 0, 0.2)
    with pytest.raises(ValueError):
        budget.take(301, 0.3)


def test_an_idle_budget_is_due_once_its_draws_end_and_an_old_one_takes_no_draw() -> None:
    book, budget = book_with_budget(400)
    book.draw(KEY, 100, 0.0)
    assert book.due(5.0) == []  # a draw still in flight: in use, not idle
    assert not budget.retired
    budget.give_back(100, 10, 5.1)
    assert book.due(5.2) == []  # idle for less than idle_s
    assert book.due(6.2) == [budget]
    assert budget.retired and book.budgets == {}

    book, budget = book_with_budget(400, now=0.0)
    assert book.draw(KEY, 100, 31.0) is None  # older than max_age_s
    assert budget.retired


def test_a_read_hands_over_the_accounts_budgets_no_draw_is_using() -> None:
    book, busy = book_with_budget(400)
    idle = book.opened(KEY, "hold-2", "budget-2", 400, 0.0, 600)
    other = book.opened(("acct-2", Bucket.ROUTED), "hold-3", "budget-3", 400, 0.0, 600)
    busy.take(100, 0.0)
    assert book.idle_of("acct-1") == [idle]
    assert not busy.retired and not other.retired  # in use: closes when idle
    assert book.budgets[KEY] == [busy]


@given(
    st.lists(
        st.tuples(st.booleans(), st.integers(1, 120), st.integers(0, 120)),
        max_size=60,
    )
)
def test_reserved_and_spent_never_exceed_the_budget(steps: list[tuple[bool, int, int]]) -> None:
    book, budget = book_with_budget(500)
    in_flight: list[int] = []
    now = 0.0
    for draw, worst, charge in steps:
        now += 0.01
        if draw or not in_flight:
            if book.draw(KEY, worst, now) is not None:
                in_flight.append(worst)
        else:
            taken = in_flight.pop()
            budget.give_back(taken, min(charge, taken), now)
        assert 0 <= budget.reserved + budget.spent <= budget.amount
        assert budget.draws == len(in_flight) and budget.reserved == sum(in_flight)
        assert budget.closable == (budget.retired and not in_flight)


def test_a_budget_is_at_most_a_quarter_of_what_is_available_and_worth_two_requests() -> None:
    book = BudgetBook(POLICY)  # 4 requests' worst cases at most
    assert book.size_for(100, available=10_000) == 400
    assert book.size_for(100, available=1_000) == 250  # a quarter of the balance
    assert book.size_for(100, available=799) == 0  # a quarter pays fewer than 2
