//! Raw file → validated [`Config`], one section at a time.
//!
//! ```text
//!   RawConfig ─→ listen ─→ admin ─→ signing ─→ store ─→ proxy ─→ tls
//!             ─→ admission ─→ server ─→ limits ─→ sse ─→ rooms ─→ Config,
//!                                                      or every problem
//! ```
//!
//! Each section's `check` fills in its defaults, pushes what is wrong (with
//! the field and what would be right) to one [`Problems`] list and goes on,
//! so an operator sees every problem at once, in the order of the list above.
//! A section hands back values even when some are wrong; they are only used
//! when the whole list is empty.

mod admin;
mod admission;
mod limits;
mod listen;
mod proxy;
mod rooms;
mod server;
mod signing;
mod sse;
mod store;
mod tls;

use std::path::Path;

use hyper::Uri;

use super::raw::RawConfig;
use super::{Config, ConfigError, ConfigProblem, EnvOverrides, Upstream};

/// Every problem found so far, in the order they were found.
#[derive(Debug, Default)]
struct Problems(Vec<ConfigProblem>);

impl Problems {
    /// Records that `field` is wrong, and `reason`: what would be right.
    fn push(&mut self, field: &str, reason: String) {
        self.0.push(ConfigProblem {
            field: field.to_string(),
            reason,
        });
    }
}

/// Checks every section; relative paths are taken from `base`.
pub(super) fn validate(
    raw: RawConfig,
    env: &EnvOverrides,
    base: &Path,
) -> Result<Config, ConfigError> {
    let mut problems = Problems::default();
    let (listen_public, listen_admin) = listen::check(&raw.listen, &mut problems);
    let admin_token = admin::check(&raw.admin, env, listen_admin, &mut problems);
    let (signing_keys, queue_token_ttl) = signing::check(&raw.signing, env, &mut problems);
    let store = store::check(&raw.store, &mut problems);
    let proxy = proxy::check(&raw.proxy, raw.tls.is_some(), base, &mut problems);
    let tls = tls::check(raw.tls.as_ref(), base, &mut problems);
    let admission = admission::check(raw.admission.as_ref(), env, &store, base, &mut problems);
    let server = server::check(&raw.server, &mut problems);
    let limits = limits::check(&raw.limits, &mut problems);
    let sse = sse::check(&raw.sse, &mut problems);
    let rooms = rooms::check(&raw.rooms, base, &mut problems);

    if !problems.0.is_empty() {
        return Err(ConfigError::Invalid(problems.0));
    }
    Ok(Config {
        listen_public: listen_public.expect("a bad listen.public is a problem above"),
        listen_admin: listen_admin.expect("a bad listen.admin is a problem above"),
        admin_token,
        signing_keys,
        queue_token_ttl,
        store,
        proxy,
        shutdown_grace: server.shutdown_grace,
        log_format: server.log_format,
        sse,
        connections: server.connections,
        tls,
        admission,
        limits,
        rooms,
    })
}

/// An upstream origin (`proxy.default_upstream`, `rooms[i].upstream`):
/// http or https, scheme and authority only.
fn upstream(s: &str, field: &str, problems: &mut Problems) -> Option<Upstream> {
    let uri: Uri = match s.parse() {
        Ok(u) => u,
        Err(e) => {
            problems.push(field, format!("{s:?} is not a URL: {e}"));
            return None;
        }
    };
    let (Some(scheme), Some(authority)) = (uri.scheme().cloned(), uri.authority().cloned()) else {
        problems.push(
            field,
            format!("{s:?} must be an absolute URL like \"http://127.0.0.1:9090\""),
        );
        return None;
    };
    if scheme != hyper::http::uri::Scheme::HTTP && scheme != hyper::http::uri::Scheme::HTTPS {
        problems.push(
            field,
            format!("{s:?}: the scheme must be http:// or https://"),
        );
        return None;
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        problems.push(
            field,
            format!("{s:?} must not have a path or query: requests keep their own path"),
        );
        return None;
    }
    Some(Upstream { scheme, authority })
}

#[cfg(test)]
mod tests {
    use crate::config::testing::{GOOD, problems};
    use crate::config::{Config, EnvOverrides};

    #[test]
    fn every_problem_is_reported_with_its_field() {
        let text = GOOD
            .replace("public = \"127.0.0.1:0\"", "public = \"nope\"")
            .replace("0123456789abcdef0123456789abcdef", "short")
            .replace(
                "admit_rate_per_min = 600",
                "admit_rate_per_min = 0\nqueue = \"over_capacity\"",
            );
        let fields: Vec<String> = problems(&text).into_iter().map(|p| p.field).collect();
        assert!(fields.contains(&"listen.public".to_string()), "{fields:?}");
        assert!(
            fields.contains(&"signing.keys[0].secret".to_string()),
            "{fields:?}"
        );
        assert!(
            fields.contains(&"rooms[0].admit_rate_per_min".to_string()),
            "{fields:?}"
        );
        assert!(fields.contains(&"rooms[0].queue".to_string()), "{fields:?}");
    }

    #[test]
    fn upstream_must_be_an_origin() {
        let text = GOOD.replace("http://127.0.0.1:9090", "http://127.0.0.1:9090/checkout");
        assert_eq!(problems(&text)[0].field, "rooms[0].upstream");
        let text = GOOD.replace("http://127.0.0.1:9090", "127.0.0.1:9090");
        assert_eq!(problems(&text)[0].field, "rooms[0].upstream");
    }

    #[test]
    fn https_upstreams_are_accepted_and_other_schemes_refused() {
        let text = GOOD.replace("http://127.0.0.1:9090", "https://checkout.test");
        let c = Config::from_toml_str(&text, &EnvOverrides::default()).unwrap();
        assert_eq!(c.rooms[0].upstream.scheme, hyper::http::uri::Scheme::HTTPS);
        let text = GOOD.replace("http://127.0.0.1:9090", "ftp://checkout.test");
        assert_eq!(problems(&text)[0].field, "rooms[0].upstream");
    }
}
