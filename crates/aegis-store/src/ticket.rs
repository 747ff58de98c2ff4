//! Request tickets: whether a write may still be applied.
//!
//! A server answering a request scopes a [`Ticket`] around the request with
//! [`Ticket::scope`]; every [`Store::apply`](crate::Store::apply) made while
//! answering carries it to the writer. The writer, when it takes such a change
//! from its queue, refuses it with [`StoreError::Expired`](crate::StoreError::Expired)
//! (nothing applied) if the request was given up or its deadline has passed,
//! and otherwise marks the ticket as picked. A server that gives up on a
//! request calls [`Ticket::abandon`], which tells it whether any change of the
//! request may have been applied, so a timeout answer never lies.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Instant;

tokio::task_local! {
    static CURRENT: Arc<Ticket>;
}

#[derive(Debug, Default)]
struct TicketState {
    picked: bool,
    abandoned: bool,
}

/// The deadline of one request and whether its writes were taken up.
#[derive(Debug)]
pub struct Ticket {
    deadline: Instant,
    state: Mutex<TicketState>,
}

impl Ticket {
    /// A ticket whose writes are refused once `deadline` has passed.
    pub fn new(deadline: Instant) -> Arc<Self> {
        Arc::new(Self { deadline, state: Mutex::new(TicketState::default()) })
    }

    /// Runs `fut` with `ticket` attached to every write it makes.
    pub async fn scope<F: Future>(ticket: Arc<Ticket>, fut: F) -> F::Output {
        CURRENT.scope(ticket, fut).await
    }

    /// The ticket of the running request, if any.
    pub(crate) fn current() -> Option<Arc<Ticket>> {
        CURRENT.try_with(Arc::clone).ok()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, TicketState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Called by the writer before applying a change: `true` (and the ticket
    /// is marked picked) if it may still be applied, `false` if the request
    /// was abandoned or its deadline passed.
    pub(crate) fn pick(&self) -> bool {
        let mut s = self.lock();
        if s.abandoned || (!s.picked && Instant::now() >= self.deadline) {
            return false;
        }
        s.picked = true;
        true
    }

    /// Gives up on the request: no change of it is applied from now on.
    /// Returns whether a change had already been taken up by the writer
    /// (it may have been applied, or may still be).
    pub fn abandon(&self) -> bool {
        let mut s = self.lock();
        s.abandoned = true;
        s.picked
    }

    /// Whether a change of this request was taken up by the writer.
    pub fn picked(&self) -> bool {
        self.lock().picked
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_ticket_is_picked_once_and_refused_after_abandon_or_deadline() {
        let t = Ticket::new(Instant::now() + Duration::from_secs(60));
        assert!(t.pick() && t.picked());
        assert!(t.abandon(), "picked before it was abandoned: may have been applied");
        assert!(!t.pick(), "nothing is applied after abandon");
        let late = Ticket::new(Instant::now());
        assert!(!late.pick() && !late.abandon(), "past its deadline: not applied");
    }
}
