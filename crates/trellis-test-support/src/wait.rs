//! Waiting on a condition with a deadline, never for a fixed time.

use std::time::Duration;

use tokio::time::Instant;

/// Calls `probe` until it returns `Some`, or until `timeout` has passed (then `None`).
/// Pauses between calls start at 5 ms and grow to 100 ms.
pub fn wait_until<T>(timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(5);
    loop {
        if let Some(value) = probe() {
            return Some(value);
        }
        let now = Instant::now();
        if now >= deadline {
            return None;
        }
        std::thread::sleep(pause.min(deadline.saturating_duration_since(now)));
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}
