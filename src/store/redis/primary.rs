//! The connection to the Redis primary: at a fixed address (`url`), or
//! found through Sentinel and followed across failovers.
//!
//! The `redis` crate's Sentinel client finds the primary when asked, but a
//! reconnecting `ConnectionManager` goes back to the address it was built
//! with, so after a failover it would keep knocking on the old primary (or
//! on the old primary demoted to a replica, answering `READONLY`). Here the
//! sentinels are asked again, and a connection to the primary they name
//! replaces the old one:
//! - when a call fails on the connection (I/O, refused, dropped, timeout);
//! - when a call is answered `READONLY` (the node is a replica now);
//! - when a sentinel announces `+switch-master`;
//! - and every few seconds anyway, in case an announcement was missed.
//!
//! Calls in flight on the old connection fail and are answered as a store
//! failure (`hold`: the line waits, nobody loses a place); the next call
//! goes to the new primary.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{ConnectionAddr, RedisError};

use crate::config::SentinelConfig;
use crate::store::StoreError;

/// How often the sentinels are asked even without a reason.
const RECHECK: Duration = Duration::from_secs(5);

/// A handle on the primary; clones share it.
#[derive(Clone)]
pub struct Primary(Arc<Inner>);

struct Inner {
    con: RwLock<ConnectionManager>,
    /// Claims' own connection to the primary (see [`Primary::claims`]).
    claims: RwLock<Option<ConnectionManager>>,
    following: Option<Following>,
}

struct Following {
    sentinel: tokio::sync::Mutex<SentinelClient>,
    master_name: String,
    sentinels: Vec<(String, u16)>,
    sentinel_password: Option<String>,
    /// A re-resolution is under way (one at a time).
    resolving: AtomicBool,
    /// The primary's address now (`host:port`), once found.
    address: Mutex<String>,
    /// Times the primary was found at a new address.
    switches: AtomicU64,
}

fn manager_config() -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_response_timeout(Some(super::RESPONSE_TIMEOUT))
        .set_connection_timeout(Some(Duration::from_secs(1)))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_secs(1))
}

fn io_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Io(format!("redis: {e}"))
}

impl Primary {
    /// The primary at `url`, connected lazily.
    pub fn at(url: &str) -> Result<Primary, StoreError> {
        let client = redis::Client::open(url).map_err(io_err)?;
        let _on_io = super::io()?.enter();
        let con =
            ConnectionManager::new_lazy_with_config(client, manager_config()).map_err(io_err)?;
        Ok(Primary(Arc::new(Inner {
            con: RwLock::new(con),
            claims: RwLock::new(None),
            following: None,
        })))
    }

    /// The primary the sentinels name, followed from then on. Until one
    /// answers, calls fail (the line holds) and the sentinels are asked
    /// again.
    pub fn through_sentinels(config: &SentinelConfig) -> Result<Primary, StoreError> {
        let addrs = config
            .sentinels
            .iter()
            .map(|(h, p)| ConnectionAddr::Tcp(h.clone(), *p));
        let mut builder =
            SentinelClientBuilder::new(addrs, &config.master_name, SentinelServerType::Master)
                .map_err(io_err)?;
        if let Some(p) = &config.password {
            builder = builder.set_client_to_redis_password(p);
        }
        if let Some(p) = &config.sentinel_password {
            builder = builder.set_client_to_sentinel_password(p);
        }
        let sentinel = builder.build().map_err(io_err)?;
        // Until the sentinels answer, a connection that cannot connect.
        let placeholder = redis::Client::open("redis://127.0.0.1:1").map_err(io_err)?;
        let _on_io = super::io()?.enter();
        let con = ConnectionManager::new_lazy_with_config(placeholder, manager_config())
            .map_err(io_err)?;
        let primary = Primary(Arc::new(Inner {
            con: RwLock::new(con.clone()),
            claims: RwLock::new(Some(con)),
            following: Some(Following {
                sentinel: tokio::sync::Mutex::new(sentinel),
                master_name: config.master_name.clone(),
                sentinels: config.sentinels.clone(),
                sentinel_password: config.sentinel_password.clone(),
                resolving: AtomicBool::new(false),
                address: Mutex::new(String::new()),
                switches: AtomicU64::new(0),
            }),
        }));
        let watch = primary.clone();
        super::io()?.spawn(async move { watch.watch().await });
        Ok(primary)
    }

    /// The connection to use now.
    pub fn con(&self) -> ConnectionManager {
        self.0.con.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// With replicas that may be promoted (Sentinel), claims go over a
    /// connection of their own, each followed by `WAIT` on it: `WAIT`
    /// covers the writes of the connection it runs on and blocks it until
    /// the replicas answer, which on the shared connection would stall
    /// every call queued behind it, the drip's lease included.
    pub fn claims(&self) -> Option<ConnectionManager> {
        self.0
            .claims
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// A call failed with `e`: when that may mean the primary moved, ask
    /// the sentinels again (in the background, once at a time).
    pub fn failed(&self, e: &RedisError) {
        let moved = e.is_io_error()
            || e.is_connection_refusal()
            || e.is_connection_dropped()
            || e.is_timeout()
            || e.code() == Some("READONLY");
        if moved && self.0.following.is_some() {
            self.resolve_in_background();
        }
    }

    /// How many times the primary moved since this process found it.
    pub fn switches(&self) -> u64 {
        self.0
            .following
            .as_ref()
            .map_or(0, |f| f.switches.load(Ordering::Acquire))
    }

    /// Where the primary is now (`host:port`), when it is followed.
    pub fn address(&self) -> Option<String> {
        let f = self.0.following.as_ref()?;
        Some(f.address.lock().unwrap_or_else(|p| p.into_inner()).clone())
    }

    fn resolve_in_background(&self) {
        let Some(f) = &self.0.following else { return };
        if f.resolving.swap(true, Ordering::AcqRel) {
            return;
        }
        let primary = self.clone();
        let Ok(io) = super::io() else {
            f.resolving.store(false, Ordering::Release);
            return;
        };
        io.spawn(async move {
            primary.resolve().await;
            if let Some(f) = &primary.0.following {
                f.resolving.store(false, Ordering::Release);
            }
        });
    }

    /// Asks the sentinels where the primary is; connects there if it moved.
    async fn resolve(&self) {
        let Some(f) = &self.0.following else { return };
        let client = match f.sentinel.lock().await.async_get_client().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(master = %f.master_name, error = %e, "no sentinel names the Redis primary");
                return;
            }
        };
        let address = client.get_connection_info().addr().to_string();
        if *f.address.lock().unwrap_or_else(|p| p.into_inner()) == address {
            return;
        }
        let connect = || ConnectionManager::new_lazy_with_config(client.clone(), manager_config());
        let (con, claims) = match (connect(), connect()) {
            (Ok(c), Ok(claims)) => (c, claims),
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!(%address, error = %e, "cannot connect to the Redis primary");
                return;
            }
        };
        let was = std::mem::replace(
            &mut *f.address.lock().unwrap_or_else(|p| p.into_inner()),
            address.clone(),
        );
        // Counted before the first call can reach the new primary, so that
        // call already carries the failover's counter margin.
        if !was.is_empty() {
            f.switches.fetch_add(1, Ordering::AcqRel);
        }
        *self.0.claims.write().unwrap_or_else(|p| p.into_inner()) = Some(claims);
        *self.0.con.write().unwrap_or_else(|p| p.into_inner()) = con;
        if !was.is_empty() {
            tracing::warn!(from = %was, to = %address, master = %f.master_name, "following the Redis primary to its new address");
        } else {
            tracing::info!(%address, master = %f.master_name, "Redis primary found through Sentinel");
        }
    }

    /// Finds the primary now, then follows `+switch-master` announcements
    /// (from whichever sentinel answers) and asks again every few seconds.
    async fn watch(self) {
        self.resolve().await;
        let Some(f) = &self.0.following else { return };
        let mut next = 0usize;
        loop {
            let (host, port) = f.sentinels[next % f.sentinels.len().max(1)].clone();
            next += 1;
            let subscribed = async {
                use redis::IntoConnectionInfo;
                let info = ConnectionAddr::Tcp(host, port)
                    .into_connection_info()
                    .ok()?;
                let info = match &f.sentinel_password {
                    Some(p) => info
                        .set_redis_settings(redis::RedisConnectionInfo::default().set_password(p)),
                    None => info,
                };
                let client = redis::Client::open(info).ok()?;
                let mut pubsub = client.get_async_pubsub().await.ok()?;
                pubsub.subscribe("+switch-master").await.ok()?;
                Some(pubsub)
            };
            let Some(mut pubsub) = subscribed.await else {
                // No sentinel to listen to: still ask now and then.
                tokio::time::sleep(RECHECK).await;
                self.resolve().await;
                continue;
            };
            let mut messages = pubsub.on_message();
            // A switch announced, or a quiet while: ask. The sentinel gone
            // (the stream ended): listen to another.
            while let Ok(Some(_)) | Err(_) = tokio::time::timeout(RECHECK, messages.next()).await {
                self.resolve().await;
            }
        }
    }
}
