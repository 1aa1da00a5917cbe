//! What a test logs, captured at every level (the PostgreSQL driver's `log` records included),
//! for tests that check that no secret reaches the logs. One subscriber serves the whole binary,
//! installed globally on first use: a thread-scoped one (`set_default`) races with the other
//! tests' threads over tracing's per-callsite interest cache and may miss events. It keeps only
//! events of threads that asked for a capture, so the other tests' logs cost a thread-local
//! lookup and are neither formatted nor kept.

use std::cell::RefCell;
use std::sync::{Arc, Mutex, Once};
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

type Buffer = Arc<Mutex<Vec<u8>>>;

thread_local! {
    static CAPTURE: RefCell<Option<Buffer>> = const { RefCell::new(None) };
}

/// Captures what is logged on the calling thread from now until the guard is dropped. A
/// `#[tokio::test]` runs on a current-thread runtime, so this is everything the test and the
/// tasks it spawns (the app, the driver's connections, a fake server) log.
pub fn capture() -> Capture {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let layer = tracing_subscriber::fmt::layer()
            .with_writer(|| ThreadLog)
            .with_ansi(false)
            .with_filter(filter_fn(|_| capturing()));
        tracing_subscriber::registry().with(layer).init();
    });
    let buffer = Buffer::default();
    CAPTURE.with(|c| *c.borrow_mut() = Some(buffer.clone()));
    Capture(buffer)
}

/// A running capture; dropping it ends the capture.
pub struct Capture(Buffer);

impl Capture {
    /// The log text collected so far.
    pub fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        let _ = CAPTURE.try_with(|c| c.borrow_mut().take());
    }
}

/// Whether the calling thread has a capture (none once the thread is being torn down).
fn capturing() -> bool {
    CAPTURE.try_with(|c| c.borrow().is_some()).unwrap_or(false)
}

/// The calling thread's capture, if it has one.
fn current() -> Option<Buffer> {
    CAPTURE.try_with(|c| c.borrow().clone()).ok().flatten()
}

/// Writes into the capture of the thread that formats the event, which is the thread that
/// emitted it.
struct ThreadLog;

impl std::io::Write for ThreadLog {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Some(buffer) = current() {
            buffer.lock().unwrap().extend_from_slice(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
