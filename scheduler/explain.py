""" "Why is my job pending?": a requester's record of a job, turned into reasons.

A job never waits silently (DESIGN.md §5). For each provider that answered
the bid this lists its quote or its typed refusal; when nobody answered it
compares the requirements with the nearest offers in the offer book and says
what each lacks ("best offer has 2 cpu, job needs 4"), because the usual cause
of silence is that no provider fits at all. A job that fails at its deadline
carries this explanation in its ``explanation`` column.

Pure: the job record, the offers and ``now`` in; a JSON-ready dict out, with a
``text`` field for people.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from protocol.messages import ResourceOffer
from scheduler.policy import Bid, UnitPrices, floor_price

if TYPE_CHECKING:
    from scheduler.requester import RequesterJob

__all__ = ["explain_job", "offer_shortfalls"]

#: How many non-answering offers the explanation names.
NEAREST_OFFERS = 3


def offer_shortfalls(job: RequesterJob, offer: ResourceOffer) -> list[str]:
    """What ``offer`` lacks for ``job``, one phrase per shortfall (empty: it fits)."""
    req = job.requirements
    lacks: list[str] = []
    if req.executor not in offer.executors:
        offered = ", ".join(offer.executors) or "none"
        lacks.append(f"executor: offers {offered}, job needs {req.executor}")
    if offer.cpu < req.cpu:
        lacks.append(f"cpu: has {offer.cpu}, job needs {req.cpu}")
    if offer.memory_mb < req.memory_mb:
        lacks.append(f"memory: has {offer.memory_mb} MB, job needs {req.memory_mb} MB")
    if len(offer.gpus) < req.gpu:
        lacks.append(f"gpu: has {len(offer.gpus)}, job needs {req.gpu}")
    floor = _floor(job, offer)
    if floor is not None and floor > job.max_total:
        lacks.append(f"price: floor {floor}, job pays at most {job.max_total}")
    return lacks


def explain_job(
    job: RequesterJob, offers: Iterable[ResourceOffer] = (), *, now: float
) -> dict[str, Any]:
    answers: list[dict[str, Any]] = []
    for peer, quote in sorted(job.quotes.items()):
        answers.append(
            {
                "peer_id": peer,
                "kind": "quote",
                "price_total": quote.price_total,
                "valid_until": quote.valid_until,
                "excluded": peer in job.excluded,
            }
        )
    for peer, refusal in sorted(job.refusals.items()):
        if peer in job.quotes:
            continue
        answers.append(
            {"peer_id": peer, "kind": "refusal", "reason": refusal.reason, "detail": refusal.detail}
        )
    nearest: list[dict[str, Any]] = []
    if not answers:
        ranked = sorted(
            ((offer_shortfalls(job, o), o.peer_id) for o in offers),
            key=lambda lp: (len(lp[0]), lp[1]),
        )
        nearest = [{"peer_id": p, "lacks": lacks} for lacks, p in ranked[:NEAREST_OFFERS]]
    out: dict[str, Any] = {
        "job_id": job.job_id,
        "state": job.state.value,
        "open_for_s": round(max(0.0, now - job.submitted_at), 3),
        "bid_rounds": job.bid_seq,
        "answers": answers,
        "nearest_offers": nearest,
        "replaced_providers": list(job.replaced),
    }
    out["text"] = _text(out)
    return out


def _text(e: dict[str, Any]) -> str:
    head = f"job {e['job_id'][:12]} is {e['state']}; bid open {e['open_for_s']:.1f} s"
    lines = [f"{head} over {e['bid_rounds']} round(s)"]
    if e["replaced_providers"]:
        lines.append(f"replaced providers: {', '.join(p[-8:] for p in e['replaced_providers'])}")
    for a in e["answers"]:
        who = a["peer_id"][-8:]
        if a["kind"] == "quote":
            note = " (excluded)" if a["excluded"] else ""
            lines.append(f"  {who}: quoted {a['price_total']}{note}")
        else:
            lines.append(f"  {who}: refused: {a['reason']} ({a['detail']})")
    if not e["answers"]:
        lines.append("no provider has answered the bid")
        if not e["nearest_offers"]:
            lines.append("  and no provider offers are known")
        for n in e["nearest_offers"]:
            lacks = "; ".join(n["lacks"]) or "fits (it may be busy or unreachable)"
            lines.append(f"  offer {n['peer_id'][-8:]}: {lacks}")
    return "\n".join(lines)


def _floor(job: RequesterJob, offer: ResourceOffer) -> int | None:
    p = offer.prices
    try:
        prices = UnitPrices(int(p.cpu_core_hour), int(p.memory_gb_hour), int(p.gpu_hour))
        bid = Bid(
            job_id=job.job_id,
            requester="",
            executor=job.requirements.executor,
            cpu=job.requirements.cpu,
            memory_mb=job.requirements.memory_mb,
            gpu=job.requirements.gpu,
            max_seconds=job.requirements.max_seconds,
            max_total=job.max_total,
            deadline=float(job.deadline),
        )
    except ValueError:
        return None
    return floor_price(bid, prices)
