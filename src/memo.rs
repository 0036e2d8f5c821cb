//! A per-connection memo of a pure computation's last input and result.
//!
//! A browser or app sends the same token and the same headers with every
//! request on a keep-alive connection, so remembering one input and its
//! result per connection skips the repeated work (token verification,
//! the access-binding hash) without a cache to size or expire. Only an
//! equal input is recalled; anything else is computed afresh.

use std::borrow::Borrow;
use std::sync::{Arc, Mutex};

/// The last input `K` and its result `V`; clones share the same slot.
pub struct LastOne<K, V>(Arc<Mutex<Option<(K, V)>>>);

impl<K, V> Default for LastOne<K, V> {
    fn default() -> Self {
        LastOne(Arc::new(Mutex::new(None)))
    }
}

impl<K, V> Clone for LastOne<K, V> {
    fn clone(&self) -> Self {
        LastOne(self.0.clone())
    }
}

impl<K, V: Clone> LastOne<K, V> {
    /// The result remembered for `input`, if it is the last one.
    pub fn recall<Q>(&self, input: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: PartialEq + ?Sized,
    {
        // Nothing panics while holding it; a poisoned slot is still consistent.
        let last = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match &*last {
            Some((k, v)) if k.borrow() == input => Some(v.clone()),
            _ => None,
        }
    }

    /// Remembers `input` and its result in place of the last one.
    pub fn remember(&self, input: K, result: V) {
        let mut last = self.0.lock().unwrap_or_else(|p| p.into_inner());
        *last = Some((input, result));
    }

    /// Whether anything is remembered.
    pub fn is_empty(&self) -> bool {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_last_equal_input_is_recalled_and_clones_share_it() {
        let memo: LastOne<Box<str>, u32> = LastOne::default();
        assert!(memo.is_empty());
        assert_eq!(memo.recall("a"), None);
        memo.clone().remember("a".into(), 1);
        assert_eq!(memo.recall("a"), Some(1));
        assert_eq!(memo.recall("b"), None);
        memo.remember("b".into(), 2);
        assert_eq!(memo.recall("a"), None);
        assert_eq!(memo.recall("b"), Some(2));
    }
}
