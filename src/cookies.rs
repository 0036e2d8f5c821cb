//! The gateway's own cookies: their names and the `Set-Cookie` values it
//! sends. Each room has three, named by a prefix and the room's id:
//!
//! ```text
//!   wr_q_<room>  queue token   (a place in line)
//!   wr_a_<room>  access token  (a claimed place: the session)
//!   wr_k_<room>  claim key     (lets this browser ask for a lost claim again)
//! ```
//!
//! The proxy keeps every name with these prefixes away from the upstream,
//! both ways (see `proxy::is_gateway_cookie`). Reading a cookie from a
//! request is `http::cookie`.

pub const QUEUE_COOKIE_PREFIX: &str = "wr_q_";
pub const ACCESS_COOKIE_PREFIX: &str = "wr_a_";
pub const CLAIM_KEY_COOKIE_PREFIX: &str = "wr_k_";

/// Cookie name prefixes the gateway owns. All are the same length, which
/// `proxy::is_gateway_cookie` relies on.
pub const COOKIE_PREFIXES: [&str; 3] = [
    QUEUE_COOKIE_PREFIX,
    ACCESS_COOKIE_PREFIX,
    CLAIM_KEY_COOKIE_PREFIX,
];

/// `prefix` + `room`, in one allocation of the exact size (the access
/// cookie's name is made on every request to a protected route).
fn name(prefix: &str, room: &str) -> String {
    let mut name = String::with_capacity(prefix.len() + room.len());
    name.push_str(prefix);
    name.push_str(room);
    name
}

pub fn queue_cookie_name(room: &str) -> String {
    name(QUEUE_COOKIE_PREFIX, room)
}
pub fn access_cookie_name(room: &str) -> String {
    name(ACCESS_COOKIE_PREFIX, room)
}
/// The browser's claim key: set before its turn comes, presented with its
/// claim, so only this browser can ask for a lost claim's answer again.
pub fn claim_key_cookie_name(room: &str) -> String {
    name(CLAIM_KEY_COOKIE_PREFIX, room)
}

pub fn cookie(name: &str, value: &str, max_age_secs: u64, secure: bool) -> String {
    format!(
        "{name}={value}; Path=/; Max-Age={max_age_secs}; HttpOnly; SameSite=Lax{}",
        if secure { "; Secure" } else { "" }
    )
}

pub fn clear_cookie(name: &str, secure: bool) -> String {
    cookie(name, "", 0, secure)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_http_only_lax_and_secure_when_asked() {
        let c = cookie("wr_q_demo", "t", 60, true);
        assert_eq!(
            c,
            "wr_q_demo=t; Path=/; Max-Age=60; HttpOnly; SameSite=Lax; Secure"
        );
        assert!(!cookie("a", "b", 1, false).contains("Secure"));
    }

    #[test]
    fn each_room_cookie_is_named_by_its_prefix_and_the_room() {
        assert_eq!(queue_cookie_name("demo"), "wr_q_demo");
        assert_eq!(access_cookie_name("demo"), "wr_a_demo");
        assert_eq!(claim_key_cookie_name("demo"), "wr_k_demo");
        assert!(
            COOKIE_PREFIXES
                .iter()
                .all(|p| p.len() == COOKIE_PREFIXES[0].len())
        );
    }
}
