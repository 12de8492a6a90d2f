//! An admitted attempt: the RPM/TPM reservation, the reservation in the
//! limits shared with other processes, and the concurrency slot it holds,
//! owned by one guard. [`Admitted::settle`] settles the reservation
//! with the tokens the call used; dropping the guard unsettled (the run
//! stopped, a cooldown began before the call, preparation failed) gives the
//! reservation back whole. The slot is freed either way. No path can forget
//! to give something back.

use tokio::sync::OwnedSemaphorePermit;

use crate::limit::{Reservation, Scope, SharedTicket};
use crate::observe::{Event, EventSink};

/// What one attempt holds from its scope while it runs.
pub(super) struct Admitted<'a> {
    scope: &'a Scope,
    events: &'a EventSink,
    reservation: Option<Reservation>,
    /// The estimate the reservation was made from (it may reserve less:
    /// what calls typically use of their estimates).
    estimate: u64,
    shared: Option<SharedTicket>,
    slot: Option<OwnedSemaphorePermit>,
}

impl<'a> Admitted<'a> {
    /// Holds `reservation` (when the scope has limits) in `scope`, made
    /// for a call estimated at `estimate` tokens.
    pub(super) fn new(
        scope: &'a Scope,
        events: &'a EventSink,
        reservation: Option<Reservation>,
        estimate: u64,
    ) -> Self {
        if let Some(r) = &reservation {
            events.emit(|| Event::QuotaReserved {
                scope: scope.name().to_owned(),
                tokens: r.tokens(),
            });
        }
        Self {
            scope,
            events,
            reservation,
            estimate,
            shared: None,
            slot: None,
        }
    }

    /// Also holds a reservation in the shared limits.
    pub(super) fn with_shared(mut self, ticket: Option<SharedTicket>) -> Self {
        self.shared = ticket;
        self
    }

    /// Also holds a concurrency slot.
    pub(super) fn with_slot(mut self, slot: Option<OwnedSemaphorePermit>) -> Self {
        self.slot = slot;
        self
    }

    /// The call was made and used `used` tokens (`None`: unknown, the
    /// estimate stands): settles the reservation and frees the slot.
    pub(super) fn settle(mut self, used: Option<u64>) {
        if let Some(t) = self.shared.take() {
            t.settle(used);
        }
        if let (Some(adm), Some(r)) = (self.scope.admission(), self.reservation.take()) {
            let estimate = r.tokens();
            adm.settle(r, used);
            if let Some(used) = used {
                adm.note_usage(self.estimate, used);
            }
            self.events.emit(|| Event::QuotaSettled {
                scope: self.scope.name().to_owned(),
                estimate,
                used,
            });
        }
    }
}

impl Drop for Admitted<'_> {
    /// No call was made: the reservation goes back whole.
    fn drop(&mut self) {
        if let (Some(adm), Some(r)) = (self.scope.admission(), self.reservation.take()) {
            adm.cancel(r);
        }
        // An unsettled shared ticket gives itself back.
        drop(self.shared.take());
        drop(self.slot.take());
    }
}
