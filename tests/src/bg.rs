//! A background process whose exit status the test needs (a rate-limited download, a
//! load generator, a Prometheus server): stopped by PID on drop and on Ctrl-C.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::{cleanup, cmd, sys};

/// A running (or exited) background process. Dropping it sends SIGTERM, then SIGKILL
/// after a second, to its PID only.
pub struct Bg {
    child: Child,
    status: Option<ExitStatus>,
    cmdline: String,
    output: PathBuf,
}

impl Bg {
    /// Starts `cmd` with stdin from /dev/null and stdout and stderr into `output`.
    pub fn spawn(mut cmd: Command, output: &Path) -> Result<Bg> {
        let cmdline = cmd::display(&cmd);
        let file =
            File::create(output).with_context(|| format!("creating {}", output.display()))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::from(file.try_clone()?))
            .stderr(Stdio::from(file))
            .spawn()
            .with_context(|| format!("cannot start `{cmdline}`"))?;
        cleanup::add_pid(child.id());
        Ok(Bg {
            child,
            status: None,
            cmdline,
            output: output.to_owned(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status, if the process has exited.
    pub fn poll(&mut self) -> Option<ExitStatus> {
        if self.status.is_none()
            && let Ok(Some(status)) = self.child.try_wait()
        {
            self.status = Some(status);
            cleanup::remove_pid(self.child.id());
        }
        self.status
    }

    pub fn running(&mut self) -> bool {
        self.poll().is_none()
    }

    /// Waits up to `timeout` for the process to exit on its own.
    pub fn wait(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.poll() {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                bail!(
                    "`{}` still running after {timeout:?}; its output:\n{}",
                    self.cmdline,
                    self.output()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `signal` to the process (by PID) unless it has exited.
    pub fn signal(&mut self, signal: i32) -> Result<()> {
        if self.running() {
            sys::kill(self.child.id(), signal)
                .with_context(|| format!("signalling `{}`", self.cmdline))?;
        }
        Ok(())
    }

    /// Stops the process: SIGTERM, SIGKILL after `grace`; returns its exit status.
    pub fn stop(&mut self, grace: Duration) -> Result<ExitStatus> {
        self.signal(libc::SIGTERM)?;
        if let Ok(status) = self.wait(grace) {
            return Ok(status);
        }
        self.signal(libc::SIGKILL)?;
        self.wait(Duration::from_secs(5))
    }

    /// Everything the process printed so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.output)
            .unwrap_or_else(|e| format!("<cannot read {}: {e}>", self.output.display()))
    }

    pub fn cmdline(&self) -> &str {
        &self.cmdline
    }
}

impl Drop for Bg {
    fn drop(&mut self) {
        cleanup::yield_to_handler();
        if self.running() {
            let _ = self.stop(Duration::from_secs(1));
        }
        let _ = self.child.wait();
        cleanup::remove_pid(self.child.id());
    }
}
