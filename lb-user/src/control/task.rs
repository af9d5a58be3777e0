//! The control plane as one task's property: the daemon's loop owns [`Control`] and
//! runs the jobs other tasks (the admin API) send it over a channel, between health
//! results, signals and ticks, so no lock is shared.

use super::Control;
use tokio::sync::{mpsc, oneshot};

/// Work for the control plane, with its reply inside.
pub type Job = Box<dyn FnOnce(&mut Control) + Send>;

/// Jobs queued at most before senders wait.
const QUEUE: usize = 64;

/// How other tasks reach the control plane.
#[derive(Clone)]
pub struct Handle {
    tx: mpsc::Sender<Job>,
}

/// A handle and the receiver the owner of `Control` runs jobs from.
pub fn channel() -> (Handle, mpsc::Receiver<Job>) {
    let (tx, rx) = mpsc::channel(QUEUE);
    (Handle { tx }, rx)
}

impl Handle {
    /// Runs `f` on the control plane and returns its result; `None` once the owner has
    /// stopped (the daemon is shutting down).
    pub async fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Control) -> T + Send + 'static,
    ) -> Option<T> {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |c| {
            // The caller may have gone (its connection closed): nothing to tell.
            let _ = tx.send(f(c));
        });
        self.tx.send(job).await.ok()?;
        rx.await.ok()
    }
}
