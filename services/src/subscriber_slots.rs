//! How many delta streams one token, and the node in all, hold open at once. Each
//! subscription is a connector actor and a pump (a blocking thread when the deltas topic feeds
//! it, of tokio's pool of 512), so callers opening streams without end would take the node's
//! threads: past either limit, `Subscribe` answers RESOURCE_EXHAUSTED naming it, and a slot
//! comes back when its stream ends (the client cancels, disconnects, or the stream fails).

use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;

/// The open subscriptions of each token name.
#[derive(Debug)]
pub struct SubscriberSlots {
    /// Per token.
    limit: usize,
    /// For the node, every token together.
    node_limit: usize,
    held: Mutex<HashMap<String, usize>>,
}

/// One open subscription; its slot is given back when dropped.
#[derive(Debug)]
pub struct SubscriberSlot {
    slots: Arc<SubscriberSlots>,
    token: String,
}

impl SubscriberSlots {
    pub fn new(limit: usize, node_limit: usize) -> Arc<SubscriberSlots> {
        Arc::new(SubscriberSlots {
            limit,
            node_limit,
            held: Mutex::new(HashMap::new()),
        })
    }

    /// A slot for `token` (the caller's token name, "" on an open engine), or why not.
    pub fn take(self: &Arc<Self>, token: &str) -> Result<SubscriberSlot, String> {
        let mut held = self.held.lock();
        let open: usize = held.values().sum();
        if open >= self.node_limit {
            return Err(format!(
                "this node has {open} subscriptions open, the limit (grpc.max_subscribers = {}): \
                 retry later or on another node",
                self.node_limit
            ));
        }
        let count = held.entry(token.to_string()).or_insert(0);
        if *count >= self.limit {
            let who = match token {
                "" => "this engine's callers (no token)".to_string(),
                name => format!("token '{name}'"),
            };
            return Err(format!(
                "{who} has {count} subscriptions open, the limit \
                 (grpc.max_subscribers_per_token = {}): close one first",
                self.limit
            ));
        }
        *count += 1;
        Ok(SubscriberSlot {
            slots: self.clone(),
            token: token.to_string(),
        })
    }

    /// The subscriptions `token` holds open.
    #[cfg(test)]
    fn held(&self, token: &str) -> usize {
        self.held.lock().get(token).copied().unwrap_or(0)
    }
}

impl Drop for SubscriberSlot {
    fn drop(&mut self) {
        let mut held = self.slots.held.lock();
        if let Some(count) = held.get_mut(&self.token) {
            *count -= 1;
            if *count == 0 {
                held.remove(&self.token);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_holds_at_most_the_limit_and_a_closed_stream_gives_its_slot_back() {
        let slots = SubscriberSlots::new(2, 100);
        let a = slots.take("ci").unwrap();
        let _b = slots.take("ci").unwrap();
        let refused = slots.take("ci").unwrap_err();
        assert!(
            refused.contains("'ci'") && refused.contains("max_subscribers_per_token = 2"),
            "{refused}"
        );
        // Another token has its own slots.
        assert!(slots.take("ops").is_ok());
        drop(a);
        assert_eq!(slots.held("ci"), 1);
        assert!(slots.take("ci").is_ok());
    }

    #[test]
    fn the_node_holds_at_most_its_limit_whatever_the_tokens() {
        let slots = SubscriberSlots::new(2, 3);
        let a = slots.take("a").unwrap();
        let _b = slots.take("b").unwrap();
        let _c = slots.take("c").unwrap();
        let refused = slots.take("d").unwrap_err();
        assert!(
            refused.contains("grpc.max_subscribers = 3") && refused.contains("3 subscriptions"),
            "{refused}"
        );
        drop(a);
        assert!(slots.take("d").is_ok());
    }
}
