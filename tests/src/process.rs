//! Child processes that are stopped when the test ends, also when it panics.

use std::{
    io::Read as _,
    process::{Child, Command, ExitStatus, Output, Stdio},
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

/// Runs `command` to its end and returns its output; fails the test (and kills the
/// process) if it takes longer than `timeout`.
pub fn run_bounded(mut command: Command, timeout: Duration, what: &str) -> Output {
    command.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut process = Guarded::spawn(command, what);
    let mut stdout = process.child.stdout.take().expect("piped stdout");
    let mut stderr = process.child.stderr.take().expect("piped stderr");
    let out_reader = std::thread::spawn(move || {
        let mut text = Vec::new();
        let _ = stdout.read_to_end(&mut text);
        text
    });
    let err_reader = std::thread::spawn(move || {
        let mut text = Vec::new();
        let _ = stderr.read_to_end(&mut text);
        text
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = process.child.try_wait().expect("poll the child") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "{what} did not finish within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: out_reader.join().expect("stdout reader"),
        stderr: err_reader.join().expect("stderr reader"),
    }
}
