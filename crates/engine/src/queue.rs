//! The pool's line of waiting work, served to tenants in turn.
//!
//! When every engine is busy, what waits is kept per tenant and served round-robin: the next
//! freed engine goes to the tenant after the one served last, not to whoever queued first. A
//! tenant that floods executions therefore waits behind its own work, and another tenant's
//! occasional execution waits for at most one turn of the tenants ahead of it. Each tenant's
//! line is bounded, so a flood is refused at the door instead of growing the queue.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

/// Waiting work of one kind `T`, kept per tenant, served in turn.
pub(crate) struct FairQueue<T> {
    lines: HashMap<Arc<str>, VecDeque<(u64, T)>>,
    /// Tenants with work waiting, in the order they are served next.
    turn: VecDeque<Arc<str>>,
    len: usize,
}

impl<T> Default for FairQueue<T> {
    fn default() -> Self {
        Self {
            lines: HashMap::new(),
            turn: VecDeque::new(),
            len: 0,
        }
    }
}

impl<T> FairQueue<T> {
    /// Items waiting, all tenants together.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Items `tenant` has waiting.
    pub(crate) fn len_of(&self, tenant: &str) -> usize {
        self.lines.get(tenant).map_or(0, VecDeque::len)
    }

    /// Queues `item` (known by `id`) at the end of `tenant`'s line.
    pub(crate) fn push(&mut self, tenant: &Arc<str>, id: u64, item: T) {
        let line = self.lines.entry(tenant.clone()).or_default();
        if line.is_empty() {
            self.turn.push_back(tenant.clone());
        }
        line.push_back((id, item));
        self.len += 1;
    }

    /// The first item of the tenant whose turn it is; that tenant goes to the back of the turn.
    pub(crate) fn pop(&mut self) -> Option<T> {
        let tenant = self.turn.pop_front()?;
        let line = self.lines.get_mut(&tenant)?;
        let (_, item) = line.pop_front()?;
        self.len -= 1;
        if line.is_empty() {
            self.lines.remove(&tenant);
        } else {
            self.turn.push_back(tenant);
        }
        Some(item)
    }

    /// Takes the item `id` out of `tenant`'s line, if it is still there (a waiter giving up).
    pub(crate) fn remove(&mut self, tenant: &str, id: u64) -> Option<T> {
        let line = self.lines.get_mut(tenant)?;
        let pos = line.iter().position(|(i, _)| *i == id)?;
        let (_, item) = line.remove(pos)?;
        self.len -= 1;
        if line.is_empty() {
            self.lines.remove(tenant);
            self.turn.retain(|t| &**t != tenant);
        }
        Some(item)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Arc<str> {
        Arc::from(s)
    }

    #[test]
    fn tenants_are_served_in_turn_not_in_arrival_order() {
        let mut q = FairQueue::default();
        for i in 0..5 {
            q.push(&t("flood"), i, format!("a{i}"));
        }
        q.push(&t("calm"), 10, "b0".to_string());
        q.push(&t("calm"), 11, "b1".to_string());
        let order: Vec<String> = std::iter::from_fn(|| q.pop()).collect();
        assert_eq!(order, ["a0", "b0", "a1", "b1", "a2", "a3", "a4"]);
        assert_eq!(q.len(), 0);
    }

    #[test]
    fn a_removed_item_leaves_the_others_in_order() {
        let mut q = FairQueue::default();
        q.push(&t("a"), 1, 1);
        q.push(&t("b"), 2, 2);
        q.push(&t("a"), 3, 3);
        assert_eq!(q.remove("a", 1), Some(1));
        assert_eq!(q.remove("a", 1), None);
        assert_eq!(q.len_of("a"), 1);
        assert_eq!(q.remove("b", 2), Some(2));
        assert_eq!(q.len_of("b"), 0);
        assert_eq!(q.pop(), Some(3));
        assert_eq!(q.pop(), None);
        assert_eq!(q.len(), 0);
    }
}
