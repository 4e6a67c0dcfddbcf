//! Where log lines go: stderr, one `write` per line, except on a thread
//! that holds its lines ([`hold_lines`]): the IKE thread logs a few lines
//! per handshake, and a PoP sets up thousands a second, so it collects
//! what one round of work logs and writes it with one system call
//! ([`write_held`]) before it waits again. Nothing is held across a wait:
//! a line is out before the thread sleeps, as it was written unheld.
use std::cell::RefCell;
use std::io::{self, Write};

use tracing_subscriber::fmt::MakeWriter;

/// Held lines beyond this are written at once (a burst of warnings).
const HOLD_MAX: usize = 64 << 10;

thread_local! {
    static HELD: RefCell<Option<Vec<u8>>> = const { RefCell::new(None) };
}

/// From now on this thread's log lines wait for [`write_held`].
pub fn hold_lines() {
    HELD.with(|h| *h.borrow_mut() = Some(Vec::with_capacity(HOLD_MAX)));
}

/// Write the lines this thread holds (one `write` for all of them).
pub fn write_held() {
    HELD.with(|h| {
        if let Some(buf) = h.borrow_mut().as_mut()
            && !buf.is_empty()
        {
            let _ = io::stderr().lock().write_all(buf);
            buf.clear();
        }
    });
}

/// The log subscriber's writer (see the module comment).
#[derive(Clone, Copy, Default)]
pub struct LogWriter;

impl<'a> MakeWriter<'a> for LogWriter {
    type Writer = LogWriter;

    fn make_writer(&'a self) -> LogWriter {
        LogWriter
    }
}

impl Write for LogWriter {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let held = HELD.with(|h| match h.borrow_mut().as_mut() {
            Some(buf) => {
                buf.extend_from_slice(bytes);
                Some(buf.len() >= HOLD_MAX)
            }
            None => None,
        });
        match held {
            Some(full) => {
                if full {
                    write_held();
                }
                Ok(bytes.len())
            }
            None => io::stderr().write(bytes),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_lines_wait_for_the_write_and_unheld_threads_do_not_wait() {
        hold_lines();
        LogWriter.write_all(b"one\n").unwrap();
        LogWriter.write_all(b"two\n").unwrap();
        assert_eq!(HELD.with(|h| h.borrow().clone()), Some(b"one\ntwo\n".to_vec()));
        write_held();
        assert_eq!(HELD.with(|h| h.borrow().clone()), Some(Vec::new()));
        std::thread::spawn(|| {
            LogWriter.write_all(b"").unwrap();
            assert_eq!(HELD.with(|h| h.borrow().clone()), None);
        })
        .join()
        .unwrap();
    }
}
