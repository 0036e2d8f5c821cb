//! How a public request ended: one name for the access log and the metrics.

/// How a public request ended, as the access log and
/// `waitroom_requests_total` name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A `/_waitroom/*` endpoint answered.
    Api,
    /// No room: sent to the default upstream.
    Passthrough,
    /// An exempt path of a room: proxied without a token.
    Exempt,
    /// A fan with access (or just admitted): proxied.
    Admitted,
    /// The fan was answered by the gateway: waiting page, status, refusal page.
    Waiting,
    /// A [`GatewayError`] answered.
    Error,
}

impl Outcome {
    pub const ALL: [Outcome; 6] = [
        Outcome::Api,
        Outcome::Passthrough,
        Outcome::Exempt,
        Outcome::Admitted,
        Outcome::Waiting,
        Outcome::Error,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Api => "api",
            Outcome::Passthrough => "passthrough",
            Outcome::Exempt => "exempt",
            Outcome::Admitted => "admitted",
            Outcome::Waiting => "waiting",
            Outcome::Error => "error",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_lists_every_outcome_at_its_own_index() {
        for (i, o) in Outcome::ALL.iter().enumerate() {
            assert_eq!(*o as usize, i, "{o:?}");
        }
    }
}
