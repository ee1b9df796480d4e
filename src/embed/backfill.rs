//! The background pass that gives a vector to every live card lacking one of the primary model:
//! cards shed by a full queue, replayed from a log written without a model (or with another
//! model), encoded by the stand-in during an outage. It reads the core's `CardsWithoutVector` a
//! bounded page at a time and hands the cards to the embedding workers.
//!
//! Architecture invariant: it never crowds out live work. Its reads and the vectors it causes go
//! through the core's bulk lane (never the priority lane heartbeats use), one page per
//! `PAGE_PAUSE` at least (`CARDS_PER_SECOND_MAX` cards a second at most), only while the card
//! queue is less than half full (new registrations keep the other half); during an external
//! embedder's outage it waits, and hands over one card when the endpoint may be asked again (the
//! probe: its success ends the outage, its failure costs one stand-in encoding, not a page's). A
//! whole pass starts again only once the queue is empty, so no card is queued twice. In a
//! cluster only the leader's pass runs (a vector is replicated state: one node's encoding serves
//! every replica), so the nodes do not each encode the same cards.

use std::sync::Weak;
use std::time::Duration;

use tokio::sync::oneshot;

use super::sources::Outage;
use super::workers::{CARD_QUEUE_MAX, Pool};
use crate::core::vectorless::VECTORLESS_PAGE_MAX;
use crate::core::{Command, Reply};
use crate::driver::Request;

/// Cards handed to the workers a second at most.
pub const CARDS_PER_SECOND_MAX: usize = 200;
/// Cards asked for per page.
const PAGE_CARDS: usize = 64;
/// The least time between two pages (PAGE_CARDS at CARDS_PER_SECOND_MAX).
const PAGE_PAUSE: Duration = Duration::from_millis((PAGE_CARDS * 1000 / CARDS_PER_SECOND_MAX) as u64);
/// The pause after a pass that found the fleet complete, or while there is no room.
const IDLE_PAUSE: Duration = Duration::from_secs(2);
/// The card queue's fill below which the pass hands it cards.
const QUEUE_ROOM: usize = CARD_QUEUE_MAX / 2;

const _: () = assert!(PAGE_CARDS <= VECTORLESS_PAGE_MAX && PAGE_CARDS < QUEUE_ROOM);

/// Runs passes until the daemon drops its `Embedder` (the pool goes).
pub fn run(pool: &Weak<Pool>) {
    let mut after = 0u64;
    loop {
        let Some(live) = pool.upgrade() else { return };
        let outage = live.outage();
        let room =
            live.queued_cards() < QUEUE_ROOM && outage != Outage::LeftAlone && !live.metrics().is_cluster_follower();
        // A new pass starts only once every card of the last one has been encoded.
        let ready = room && (after != 0 || live.queued_cards() == 0);
        if !ready {
            drop(live);
            std::thread::sleep(PAGE_PAUSE);
            continue;
        }
        let limit = if outage == Outage::RetryDue { 1 } else { PAGE_CARDS };
        let page = read_page(&live, after, limit);
        let pause = match page {
            Some((cards, next)) => {
                for card in &cards {
                    live.card_lacking_vector(&card.agent_id, &card.text);
                }
                live.metrics().embed_backfill_total.inc_by(cards.len() as u64);
                after = next.unwrap_or(0);
                // After a whole pass, time for the vectors still being encoded to land.
                if next.is_none() { IDLE_PAUSE } else { PAGE_PAUSE }
            }
            // The core is busy or shutting down: later.
            None => IDLE_PAUSE,
        };
        drop(live);
        std::thread::sleep(pause);
    }
}

/// One page of live cards without a vector of the primary model, and the cursor to go on from.
fn read_page(
    pool: &Pool,
    after: u64,
    limit: usize,
) -> Option<(Vec<crate::core::vectorless::VectorlessCard>, Option<u64>)> {
    let (reply, answer) = oneshot::channel();
    let request = Request::Call {
        command: Command::CardsWithoutVector {
            model: pool.primary().to_string(),
            after,
            limit: limit as u32,
        },
        principal: None,
        reply,
        mailbox: None,
    };
    pool.core().send(request).ok()?;
    match answer.blocking_recv() {
        Ok(Ok(Reply::VectorlessCards { cards, next })) => Some((cards, next)),
        Ok(Ok(other)) => {
            tracing::error!(?other, "CardsWithoutVector answered with another reply");
            None
        }
        Ok(Err(_)) | Err(_) => None,
    }
}
