"""The job table on its own: order, atomic claims from several threads, idempotency, restart recovery."""

from __future__ import annotations

import threading

import pytest

from hayai.store import Store
from hayai.store.jobs import IdempotencyConflict


def _submit(store, prompt, **extra):
    return store.submit_job(kind="generate", api="hayai", request={"prompt": prompt}, options={}, **extra)[0]


def test_priority_then_submission_order(tmp_path):
    store = Store(tmp_path / "h.db")
    first, second = _submit(store, "a"), _submit(store, "b")
    urgent = _submit(store, "c", priority=3)
    assert [store.queue_position(store.job(j.id)) for j in (urgent, first, second)] == [0, 1, 2]
    assert [store.claim_job().id for _ in range(3)] == [urgent.id, first.id, second.id]
    assert store.claim_job() is None


def test_two_workers_never_claim_the_same_job(tmp_path):
    path = tmp_path / "h.db"
    seed = Store(path)
    ids = {_submit(seed, f"p{n}").id for n in range(40)}
    claimed: list[str] = []
    lock = threading.Lock()

    def worker():
        store = Store(path)  # its own connection, as a second process would have
        while (job := store.claim_job()) is not None:
            with lock:
                claimed.append(job.id)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(claimed) == sorted(ids)


def test_an_idempotency_key_returns_the_first_job_for_the_same_submission_only(tmp_path):
    store = Store(tmp_path / "h.db")
    job, created = store.submit_job(kind="generate", api="hayai", request={"prompt": "x", "seed": 5}, options={},
                                    idempotency_key="k", submitted={"prompt": "x"})
    again, created_again = store.submit_job(kind="generate", api="hayai", request={"prompt": "x", "seed": 9}, options={},
                                            idempotency_key="k", submitted={"prompt": "x"})
    assert created and not created_again and again.id == job.id and again.request["seed"] == 5
    with pytest.raises(IdempotencyConflict, match="another request"):
        store.submit_job(kind="generate", api="hayai", request={"prompt": "y"}, options={}, idempotency_key="k",
                         submitted={"prompt": "y"})


def test_a_dead_servers_running_jobs_go_back_in_their_place(tmp_path):
    store = Store(tmp_path / "h.db")
    a, b = _submit(store, "a"), _submit(store, "b")
    assert store.claim_job().id == a.id
    assert store.requeue_running_jobs() == [a.id]
    assert store.job(a.id).status == "queued" and store.queue_position(store.job(a.id)) == 0
    assert store.claim_job().attempts == 2
    store.finish_job(a.id, status="done", result={"images": []})
    assert store.job(a.id).finished and store.job(a.id).result == {"images": []}
    assert store.cancel_queued_job(b.id) and store.job(b.id).status == "cancelled"
    assert not store.cancel_queued_job(b.id)
    with pytest.raises(ValueError):
        store.finish_job(b.id, status="running")
