//! waitroom: a virtual waiting-room gateway.
//!
//! A reverse proxy in front of a checkout. Each arriving fan gets a signed
//! queue token fixing their place in line; a drip admits fans at the rate
//! the promoter sets; everyone else sees their live position.
//!
//! Modules, in the order a request meets them: [`server`] (listeners) →
//! [`app`] (routing) → [`gate`] (the decision) → [`proxy`] (upstream) or
//! [`page`] / [`api`] (the fan's side). The line itself is [`queue`] (pure),
//! paced by [`drip`] (pure), run by [`room`], made durable by [`store`].
#![forbid(unsafe_code)]

pub mod admin;
pub mod admission;
pub mod api;
pub mod app;
pub mod batch;
pub mod binding;
pub mod capacity;
pub mod certs;
pub mod checkout;
pub mod clock;
pub mod config;
pub mod conn;
pub mod cookies;
pub mod csrf;
pub mod demo;
pub mod drip;
pub mod error;
pub mod gate;
pub mod gateway;
pub mod host;
pub mod http;
pub mod limits;
pub mod memo;
pub mod metrics;
pub mod outcome;
pub mod page;
pub mod path;
pub mod pow;
pub mod proxy;
pub mod queue;
pub mod rfc3339;
pub mod room;
pub mod server;
pub mod shuffle;
pub mod sse;
pub mod status;
pub mod store;
pub mod streams;
pub mod tls;
pub mod token;
