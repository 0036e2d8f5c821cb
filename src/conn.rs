//! What the gateway keeps per client connection, for the requests on it.
//!
//! The server makes one [`Connection`] when it accepts a connection and
//! hands it to the handler with every request on it (an argument, not a
//! request extension: extensions cost a hashed insert, a box and a removal
//! per request). It holds the connection's own upstream link and the memos
//! that let a keep-alive connection's repeated requests skip repeated work,
//! plus its peer address already written as header text.
//!
//! It only holds them: the proxy is handed the link and the peer's header
//! text it needs (`Proxy::forward`), and knows nothing of this record.
//!
//! It also holds what an upgraded request leaves behind (a WebSocket
//! tunnel): the handler puts it here with the `101`, and the server runs it
//! in the connection's own task once hyper has let go of the connection,
//! so the tunnel keeps the connection's place in the cap and its gauge,
//! is never closed as idle, and holds a graceful drain like a request.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use crate::binding::FingerprintMemo;
use crate::proxy::{PeerHeaders, UpstreamLink};
use crate::token::TokenMemo;

/// One client connection's state, shared by its requests.
pub struct Connection {
    /// The peer's address, as accepted.
    pub addr: SocketAddr,
    /// Its own upstream HTTP/1.1 connection (see `proxy::UpstreamLink`).
    pub link: UpstreamLink,
    /// The last token verified on it (see `token::TokenMemo`).
    pub memo: TokenMemo,
    /// The last access-binding fingerprint (see `binding::fingerprint_with`).
    pub binding: FingerprintMemo,
    /// The peer's address as the forwarding headers write it: formatting
    /// an address was ~2% of an admitted request's instructions (callgrind).
    pub peer: PeerHeaders,
    /// What runs once the connection is upgraded (see the module docs).
    upgraded: Mutex<Option<Upgraded>>,
}

/// What runs on a connection once hyper has handed it over.
pub type Upgraded = Pin<Box<dyn Future<Output = ()> + Send>>;

impl Connection {
    pub fn new(addr: SocketAddr) -> Arc<Connection> {
        Arc::new(Connection {
            addr,
            link: UpstreamLink::new(),
            memo: TokenMemo::default(),
            binding: FingerprintMemo::default(),
            peer: PeerHeaders::new(addr.ip()),
            upgraded: Mutex::new(None),
        })
    }

    /// Runs `then` on this connection once its `101` is written (one at
    /// most: HTTP/1 upgrades a connection once).
    pub fn on_upgrade(&self, then: Upgraded) {
        *self.upgraded.lock().unwrap_or_else(|p| p.into_inner()) = Some(then);
    }

    /// What an upgrade left to run, if any.
    pub fn take_upgraded(&self) -> Option<Upgraded> {
        self.upgraded
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }
}
