//! A work queue of secret names, as controllers keep one: a name is queued
//! at most once, handled by one worker at a time, and handled again if it
//! was queued while being handled.

use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;

use aegis_core::SecretName;
use tokio::sync::Notify;

#[derive(Default)]
struct Inner {
    order: VecDeque<SecretName>,
    queued: HashSet<SecretName>,
    active: HashSet<SecretName>,
    again: HashSet<SecretName>,
}

/// The queue. Cheap to share behind an `Arc`.
#[derive(Default)]
pub struct WorkQueue {
    inner: Mutex<Inner>,
    ready: Notify,
}

impl WorkQueue {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `name` unless it is queued already.
    pub fn push(&self, name: SecretName) {
        let mut q = self.lock();
        if q.active.contains(&name) {
            q.again.insert(name);
            return;
        }
        if q.queued.insert(name.clone()) {
            q.order.push_back(name);
            drop(q);
            self.ready.notify_one();
        }
    }

    /// Waits for the next name; the caller must call [`WorkQueue::done`] with it.
    pub async fn pop(&self) -> SecretName {
        loop {
            if let Some(name) = self.try_pop() {
                return name;
            }
            self.ready.notified().await;
        }
    }

    fn try_pop(&self) -> Option<SecretName> {
        let mut q = self.lock();
        let name = q.order.pop_front()?;
        q.queued.remove(&name);
        q.active.insert(name.clone());
        let more = !q.order.is_empty();
        drop(q);
        if more {
            // Another worker may be waiting for the rest.
            self.ready.notify_one();
        }
        Some(name)
    }

    /// `name` was handled; it is queued again if it was pushed meanwhile.
    pub fn done(&self, name: &SecretName) {
        let again = {
            let mut q = self.lock();
            q.active.remove(name);
            q.again.remove(name)
        };
        if again {
            self.push(name.clone());
        }
    }

    /// Names queued and not yet taken.
    pub fn len(&self) -> usize {
        self.lock().order.len()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> SecretName {
        SecretName::parse(s).unwrap()
    }

    #[tokio::test]
    async fn a_name_is_queued_once_and_again_if_pushed_while_active() {
        let q = WorkQueue::default();
        q.push(n("k8s:a"));
        q.push(n("k8s:a"));
        q.push(n("k8s:b"));
        assert_eq!(q.len(), 2);
        let a = q.pop().await;
        assert_eq!(a, n("k8s:a"));
        q.push(n("k8s:a"));
        assert_eq!(q.len(), 1, "an active name waits for done");
        q.done(&a);
        assert_eq!(q.len(), 2);
        assert_eq!(q.pop().await, n("k8s:b"));
        assert_eq!(q.pop().await, n("k8s:a"));
    }

    #[tokio::test]
    async fn pop_waits_for_a_push() {
        let q = std::sync::Arc::new(WorkQueue::default());
        let q2 = q.clone();
        let waiter = tokio::spawn(async move { q2.pop().await });
        tokio::task::yield_now().await;
        q.push(n("k8s:x"));
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), waiter).await.unwrap().unwrap();
        assert_eq!(got, n("k8s:x"));
    }
}
