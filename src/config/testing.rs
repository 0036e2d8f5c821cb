//! Fixtures for the unit tests of every section.

use super::{Config, ConfigError, ConfigProblem, EnvOverrides};

/// The smallest configuration that validates.
pub(super) const GOOD: &str = r#"
        [listen]
        public = "127.0.0.1:0"
        admin = "127.0.0.1:0"
        [admin]
        token = "change-me"
        [signing]
        keys = [{ kid = "k1", secret = "0123456789abcdef0123456789abcdef" }]
        [[rooms]]
        id = "demo"
        upstream = "http://127.0.0.1:9090"
        admit_rate_per_min = 600
    "#;

/// The problems `text` has; panics if it has none.
pub(super) fn problems(text: &str) -> Vec<ConfigProblem> {
    match Config::from_toml_str(text, &EnvOverrides::default()) {
        Err(ConfigError::Invalid(p)) => p,
        other => panic!("expected validation problems, got {other:?}"),
    }
}
