from p2p.scoring import PeerScores
from scheduler.offer_book import OfferAdded, OfferBook, OfferRemoved, OfferUpdated
from tests.factories import Peer

A, B = Peer(1), Peer(2)
T0 = 1_700_000_000.0


def test_rejects_accumulate_to_a_ban_that_expires():
    s = PeerScores(threshold=100, ban_duration_s=600, half_life_s=300)
    assert s.penalise("p", "undecodable", T0) is None  # 25
    assert s.penalise("p", "undecodable", T0) is None  # 50
    assert s.penalise("p", "bad_signature", T0 + 0.0) is not None  # 100 -> ban
    assert s.is_banned("p", T0 + 599)
    assert not s.is_banned("p", T0 + 601)
    assert s.score("p", T0 + 601) == 0.0


def test_scores_decay_with_the_half_life():
    s = PeerScores(threshold=100, ban_duration_s=600, half_life_s=300)
    s.penalise("p", "bad_signature", T0)
    assert abs(s.score("p", T0 + 300) - 25.0) < 1e-9
    # decayed 50 -> 25, +50 = 75: still under the threshold
    assert s.penalise("p", "bad_signature", T0 + 300) is None


def test_a_garbage_frame_bans_at_once_and_validator_errors_do_not_count():
    s = PeerScores(threshold=100, ban_duration_s=60, half_life_s=300)
    assert s.penalise("q", "validator_error", T0) is None
    assert s.score("q", T0) == 0
    ban = s.penalise("q", "garbage_frame", T0)
    assert ban is not None and ban.until == T0 + 60


def test_book_add_update_and_ignore_older():
    book = OfferBook()
    assert book.apply(A.offer(seq=1, now=T0), T0) == [OfferAdded(A.offer(seq=1, now=T0))]
    assert isinstance(book.apply(A.offer(seq=2, now=T0), T0)[0], OfferUpdated)
    assert book.apply(A.offer(seq=1, now=T0), T0) == []
    assert len(book) == 1


def test_book_expiry_withdrawal_and_departure():
    book = OfferBook()
    book.apply(A.offer(seq=1, now=T0, ttl=10), T0)
    book.apply(B.offer(seq=1, now=T0, ttl=20), T0)
    assert book.next_expiry() == T0 + 10
    assert book.expire(T0 + 5) == []
    (gone,) = book.expire(T0 + 10)
    assert (
        isinstance(gone, OfferRemoved)
        and gone.reason == "expired"
        and gone.offer.peer_id == A.peer_id
    )
    offer_b = book.get(B.peer_id)
    assert book.withdraw(B.withdrawal(offer_b, seq=0, now=T0)) == []  # older than the offer
    (w,) = book.withdraw(B.withdrawal(offer_b, seq=2, now=T0))
    assert w.reason == "withdrawn" and len(book) == 0
    book.apply(A.offer(seq=3, now=T0 + 11), T0 + 11)
    (d,) = book.peer_departed(A.peer_id)
    assert d.reason == "departed"
    assert book.peer_departed(A.peer_id) == []


def test_book_refuses_an_already_expired_offer():
    book = OfferBook()
    assert book.apply(A.offer(now=T0, ttl=1), T0 + 5) == []
