//! Child processes that are stopped when the test ends, also when it panics.

use std::{
    process::{Child, Command, ExitStatus},
    time::{Duration, Instant},
};

/// A running child; dropping it kills it (SIGKILL) and reaps it.
pub struct Guarded {
    pub child: Child,
    what: String,
}

impl Guarded {
    /// Starts `command`.
    pub fn spawn(mut command: Command, what: &str) -> Self {
        let child = command
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start {what} ({command:?}): {err}"));
        Self {
            child,
            what: what.to_owned(),
        }
    }

    /// Sends `signal` (e.g. `"TERM"`) and waits up to `timeout` for the exit.
    pub fn stop(&mut self, signal: &str, timeout: Duration) -> Option<ExitStatus> {
        let _ = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        if self.is_running() {
            eprintln!("stopping {} (pid {})", self.what, self.child.id());
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}
