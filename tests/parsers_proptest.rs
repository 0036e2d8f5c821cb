//! Property tests for everything that parses client or operator input:
//! whatever the bytes, the parsers answer with a value or a typed error,
//! never a panic; and what we write, we read back.

use proptest::prelude::*;
use waitroom::config::{Config, EnvOverrides, SigningKey};
use waitroom::gate::validate_next;
use waitroom::http::{cookie, query_pairs};
use waitroom::path::{normalize, without_params};
use waitroom::sse::parse_last_event_id;
use waitroom::token::{Claims, Expect, Keys, Kind};

fn keys() -> Keys {
    Keys::new(&[SigningKey {
        kid: "p1".into(),
        secret: b"proptest-secret-proptest-secret-proptest".to_vec(),
    }])
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, .. ProptestConfig::default() })]

    #[test]
    fn arbitrary_tokens_are_refused_without_panicking(token in ".{0,300}") {
        let expect = Expect { kind: Kind::Queue, room: "demo", epoch: 1 };
        prop_assert!(keys().verify(&token, expect, 1_000).is_err());
    }

    #[test]
    fn jwt_shaped_garbage_is_refused(h in "[A-Za-z0-9_-]{0,60}", p in "[A-Za-z0-9_-]{0,120}", s in "[A-Za-z0-9_-]{0,60}") {
        let expect = Expect { kind: Kind::Queue, room: "demo", epoch: 1 };
        let token = format!("{h}.{p}.{s}");
        prop_assert!(keys().verify(&token, expect, 1_000).is_err());
    }

    #[test]
    fn signed_claims_round_trip(room in "[a-z0-9_-]{1,48}", ep in 1u64..(1 << 53), seq in 1u64..u64::MAX / 2, iat in 0u64..4_000_000_000) {
        let k = keys();
        let c = Claims { typ: Kind::Queue, room: room.clone(), ep, seq, vid: "v".into(), iat, exp: iat + 3600, sat: None, bnd: None };
        let got = k.verify(&k.sign(&c), Expect { kind: Kind::Queue, room: &room, epoch: ep }, iat + 10);
        prop_assert_eq!(got, Ok(c));
    }

    #[test]
    fn cookie_headers_never_panic(raw in proptest::collection::vec(any::<u8>(), 0..200), name in "[a-z_]{1,10}") {
        let mut h = hyper::HeaderMap::new();
        if let Ok(v) = hyper::header::HeaderValue::from_bytes(&raw) {
            h.insert(hyper::header::COOKIE, v);
        }
        let _ = cookie(&h, &name);
    }

    #[test]
    fn queries_never_panic_and_round_trip(q in ".{0,200}", k in "[a-z]{1,8}", v in ".{0,40}") {
        let _ = query_pairs(Some(&q));
        let enc: String = form_encode(&k, &v);
        let pairs = query_pairs(Some(&enc)).unwrap();
        prop_assert_eq!(pairs, vec![(k, v)]);
    }

    #[test]
    fn last_event_ids_never_panic(s in ".{0,60}", a in any::<u64>(), b in any::<u64>()) {
        let _ = parse_last_event_id(&s);
        let id = format!("{a}-{b}");
        prop_assert_eq!(parse_last_event_id(&id), Ok((a, b)));
    }

    #[test]
    fn next_urls_never_leave_the_site(s in ".{0,80}") {
        if let Ok(n) = validate_next(&s, "/shop") {
            prop_assert!(n.starts_with("/shop"));
            prop_assert!(!n.starts_with("//"));
        }
    }

    #[test]
    fn arbitrary_config_text_never_panics(text in ".{0,400}") {
        let _ = Config::from_toml_str(&text, &EnvOverrides::default());
    }

    #[test]
    fn config_values_of_any_shape_never_panic(
        rate in any::<i64>(), session in any::<i64>(), cap in any::<i64>(),
        addr in "[0-9a-z.:\\[\\]]{0,25}", upstream in ".{0,30}", prefix in ".{0,12}",
    ) {
        let text = format!(
            "[listen]\npublic = {addr:?}\nadmin = \"127.0.0.1:0\"\n[admin]\ntoken = \"t\"\n[signing]\nkeys = [{{ kid = \"k\", secret = \"0123456789abcdef0123456789abcdef\" }}]\n\
             [[rooms]]\nid = \"r\"\nupstream = {upstream:?}\npath_prefix = {prefix:?}\nadmit_rate_per_min = {rate}\nsession_secs = {session}\nmax_active = {cap}\n"
        );
        let _ = Config::from_toml_str(&text, &EnvOverrides::default());
    }
}

fn form_encode(k: &str, v: &str) -> String {
    form_urlencoded::Serializer::new(String::new())
        .append_pair(k, v)
        .finish()
}

/// Path pieces that matter to normalisation, for building hostile paths.
fn path_pieces() -> impl Strategy<Value = String> {
    proptest::collection::vec(
        proptest::sample::select(vec![
            "/", "/", "/", "a", "Z", "~", ".", "..", "%2e", "%2E", "%2f", "%5c", "\\", "%41",
            "%7E", "%25", "%3B", "%c3%a9", "é", ";", ";v=1", "%00", "%", "%zz", "\"",
        ]),
        0..16,
    )
    .prop_map(|parts| format!("/{}", parts.concat()))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2048, failure_persistence: None, .. ProptestConfig::default() })]

    /// Whatever the path, a normal form is idempotent, starts with '/', has
    /// no empty, "." or ".." segment (parameters removed), and is accepted
    /// by hyper's parser; so is its routing view.
    #[test]
    fn normal_paths_are_normal_and_idempotent(path in path_pieces()) {
        let Ok(normal) = normalize(&path) else { return Ok(()) };
        prop_assert!(normal.starts_with('/'), "{:?} -> {:?}", path, normal);
        prop_assert!(!normal.contains("//"), "{:?} -> {:?}", path, normal);
        for segment in normal.split('/').skip(1) {
            let name = segment.split(';').next().unwrap_or("");
            prop_assert!(name != "." && name != "..", "{:?} -> {:?}", path, normal);
        }
        prop_assert!(!normal.contains('\\'));
        prop_assert!(matches!(normalize(&normal), Ok(std::borrow::Cow::Borrowed(n)) if n == normal));
        let view = without_params(&normal);
        prop_assert!(!view.contains(';'));
        prop_assert!(matches!(normalize(&view), Ok(std::borrow::Cow::Borrowed(n)) if n == view));
        prop_assert!(normal.parse::<hyper::http::uri::PathAndQuery>().is_ok(), "{:?}", normal);
    }
}
