//! Who holds this node's open event streams, so one token or one address
//! cannot take the whole `sse.max_connections`:
//!
//! - per place, at most `sse.max_streams_per_place` (a few tabs plus the
//!   app). A new stream beyond it *supersedes* the place's oldest, which
//!   gets a terminal `superseded` event and ends. Refusing the new one
//!   instead would lock the fan out of the tab they are looking at; and an
//!   evicted page must not reconnect, or two tabs would evict each other
//!   every `retry` forever.
//! - per client address (IPv4, or IPv6 /64), at most
//!   `sse.max_streams_per_client`; beyond it a new stream is refused (429).
//!   A carrier NAT puts thousands of phones behind one address, so the
//!   default is generous: it stops one machine, not one mobile network.
//!
//! Counted per node (a fan's streams on other replicas are theirs). Both
//! maps are sharded (`DashMap`): opening and closing a stream locks one
//! shard of each, and nothing here runs per event.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use tokio::sync::oneshot;

/// One place: the room (its index in the app), the epoch and the sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PlaceKey {
    pub room: usize,
    pub epoch: u64,
    pub seq: u64,
}

/// The open streams of this node, by place and by client address.
pub struct Streams {
    per_place: usize,
    per_client: usize,
    /// Per place, its streams oldest first (ids only grow), each with the
    /// sender that tells it it was superseded. A map rather than a list so
    /// that closing stays cheap where a load test raises the limit and
    /// puts every stream on one token.
    places: DashMap<PlaceKey, BTreeMap<u64, oneshot::Sender<()>>>,
    clients: DashMap<IpAddr, usize>,
    next_id: AtomicU64,
}

/// One open stream's share of the counts; give it back with [`Streams::close`].
#[derive(Debug)]
pub struct Ticket {
    id: u64,
    place: PlaceKey,
    client: IpAddr,
}

/// The client address already holds `sse.max_streams_per_client` streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientBudgetSpent;

impl Streams {
    pub fn new(per_place: usize, per_client: usize) -> Streams {
        Streams {
            per_place: per_place.max(1),
            per_client: per_client.max(1),
            places: DashMap::new(),
            clients: DashMap::new(),
            next_id: AtomicU64::new(0),
        }
    }

    /// Counts a new stream for `place` from `client`. The receiver resolves
    /// when a newer stream of the same place supersedes this one.
    pub fn open(
        &self,
        place: PlaceKey,
        client: IpAddr,
    ) -> Result<(Ticket, oneshot::Receiver<()>), ClientBudgetSpent> {
        let client = crate::limits::client_key(client);
        {
            let mut open = self.clients.entry(client).or_insert(0);
            if *open >= self.per_client {
                return Err(ClientBudgetSpent);
            }
            *open += 1;
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (supersede, superseded) = oneshot::channel();
        let oldest = {
            let mut holders = self.places.entry(place).or_default();
            holders.insert(id, supersede);
            if holders.len() > self.per_place {
                holders.pop_first()
            } else {
                None
            }
        };
        if let Some((_, supersede)) = oldest {
            // Its stream may be ending on its own already: nothing to tell.
            let _ = supersede.send(());
        }
        Ok((Ticket { id, place, client }, superseded))
    }

    /// Gives back a stream's share: when it ends for any reason.
    pub fn close(&self, ticket: &Ticket) {
        if let Entry::Occupied(mut open) = self.clients.entry(ticket.client) {
            *open.get_mut() = open.get().saturating_sub(1);
            if *open.get() == 0 {
                open.remove();
            }
        }
        if let Entry::Occupied(mut holders) = self.places.entry(ticket.place) {
            holders.get_mut().remove(&ticket.id);
            if holders.get().is_empty() {
                holders.remove();
            }
        }
    }

    /// Places with at least one open stream (for tests and metrics).
    pub fn places(&self) -> usize {
        self.places.len()
    }

    /// Client addresses with at least one open stream.
    pub fn clients(&self) -> usize {
        self.clients.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PLACE: PlaceKey = PlaceKey {
        room: 0,
        epoch: 1,
        seq: 7,
    };

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_stream_beyond_the_place_limit_supersedes_the_oldest() {
        let streams = Streams::new(2, 100);
        let (t1, mut r1) = streams.open(PLACE, ip("10.0.0.1")).unwrap();
        let (t2, mut r2) = streams.open(PLACE, ip("10.0.0.2")).unwrap();
        assert!(r1.try_recv().is_err() && r2.try_recv().is_err());
        let (t3, mut r3) = streams.open(PLACE, ip("10.0.0.3")).unwrap();
        assert_eq!(r1.try_recv(), Ok(()), "the oldest is superseded");
        assert!(r2.try_recv().is_err() && r3.try_recv().is_err());
        // Another place is not affected.
        let other = PlaceKey { seq: 8, ..PLACE };
        let (t4, mut r4) = streams.open(other, ip("10.0.0.1")).unwrap();
        assert!(r4.try_recv().is_err() && r2.try_recv().is_err());
        for t in [&t1, &t2, &t3, &t4] {
            streams.close(t);
        }
        assert_eq!((streams.places(), streams.clients()), (0, 0), "no leak");
    }

    #[test]
    fn a_client_address_has_a_budget_and_gets_it_back() {
        let streams = Streams::new(4, 2);
        let place = |seq| PlaceKey { seq, ..PLACE };
        let (a, _ra) = streams.open(place(1), ip("192.0.2.1")).unwrap();
        let (_b, _rb) = streams.open(place(2), ip("192.0.2.1")).unwrap();
        assert_eq!(
            streams.open(place(3), ip("192.0.2.1")).unwrap_err(),
            ClientBudgetSpent
        );
        // One IPv6 /64 is one client; another address is not limited.
        let (_c, _rc) = streams.open(place(3), ip("2001:db8::1")).unwrap();
        let (_d, _rd) = streams.open(place(4), ip("2001:db8::2")).unwrap();
        assert!(streams.open(place(5), ip("2001:db8::3")).is_err());
        streams.close(&a);
        assert!(streams.open(place(3), ip("192.0.2.1")).is_ok());
    }
}
