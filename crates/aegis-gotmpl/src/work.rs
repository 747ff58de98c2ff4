//! What rendering costs outside the steps: the bytes of the values a
//! template copies, and how many renders run at once in the process.

use std::sync::{Condvar, Mutex, MutexGuard};

use gtmpl_value::Value;

/// What one value (or one entry of an array or map) costs besides its
/// text: about the size of `gtmpl`'s `Value` and of a map entry's bookkeeping.
const NODE_BYTES: usize = 32;

/// The bytes a copy of `value` takes, about: its text and a fixed cost per
/// value. Deterministic, so the work of a render is the same on every run.
pub(super) fn size_of(value: &Value) -> usize {
    match value {
        Value::String(s) => NODE_BYTES.saturating_add(s.len()),
        Value::Array(items) => items.iter().fold(NODE_BYTES, |n, v| n.saturating_add(size_of(v))),
        Value::Object(map) | Value::Map(map) => map.iter().fold(NODE_BYTES, |n, (k, v)| {
            n.saturating_add(NODE_BYTES).saturating_add(k.len()).saturating_add(size_of(v))
        }),
        Value::Number(_) | Value::Bool(_) | Value::Nil | Value::NoValue | Value::Function(_) => NODE_BYTES,
    }
}

/// Renders running now, in the whole process.
static RUNNING: Mutex<usize> = Mutex::new(0);

/// Signalled when a render ends.
static ENDED: Condvar = Condvar::new();

fn running() -> MutexGuard<'static, usize> {
    RUNNING.lock().unwrap_or_else(|e| e.into_inner())
}

/// One render's turn: taken before a template is parsed, given back when
/// dropped. At most `max` renders hold one at once, so the memory templates
/// hold is at most `max` budgets whatever the number of writes, of secrets
/// loaded at start-up, or of cores.
pub(super) struct Turn(());

impl Turn {
    /// Waits (blocking the thread: renders run on blocking threads) until
    /// fewer than `max` renders run, then takes a turn.
    pub(super) fn take(max: usize) -> Self {
        let mut n = running();
        while *n >= max.max(1) {
            n = ENDED.wait(n).unwrap_or_else(|e| e.into_inner());
        }
        *n += 1;
        Turn(())
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        let mut n = running();
        *n = n.saturating_sub(1);
        drop(n);
        ENDED.notify_one();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[test]
    fn sizes_count_the_text_and_each_value() {
        assert_eq!(size_of(&Value::from("abc")), NODE_BYTES + 3);
        let array = Value::Array(vec![Value::from("ab"), Value::from(1)]);
        assert_eq!(size_of(&array), NODE_BYTES + (NODE_BYTES + 2) + NODE_BYTES);
        let map = Value::Map([("k".to_owned(), Value::from("v"))].into_iter().collect());
        assert_eq!(size_of(&map), NODE_BYTES + NODE_BYTES + 1 + NODE_BYTES + 1);
    }

    #[test]
    fn no_more_than_max_turns_are_held_at_once() {
        let (now, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (now, most) = (now.clone(), most.clone());
                std::thread::spawn(move || {
                    for _ in 0..50 {
                        let _turn = Turn::take(2);
                        let n = now.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(n, Ordering::SeqCst);
                        std::thread::yield_now();
                        now.fetch_sub(1, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        assert!(most.load(Ordering::SeqCst) <= 2, "{}", most.load(Ordering::SeqCst));
    }
}
