//! The store's own runtime, and the way synchronous callers wait on it: a
//! plain channel, which works from a blocking section of any runtime and
//! outside of one (a `block_on` there would panic).

use std::future::Future;

pub(crate) struct Bridge {
    rt: Option<tokio::runtime::Runtime>,
}

impl Bridge {
    pub(crate) fn new() -> Result<Bridge, String> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("sb-postgres")
            .enable_all()
            .build()
            .map_err(|e| format!("postgres runtime: {e}"))?;
        Ok(Bridge { rt: Some(rt) })
    }

    pub(crate) fn handle(&self) -> &tokio::runtime::Handle {
        // Present until drop.
        self.rt
            .as_ref()
            .map(|r| r.handle())
            .expect("runtime present")
    }

    pub(crate) fn spawn<F>(&self, fut: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.handle().spawn(fut);
    }

    /// Runs `fut` on the store's runtime and waits for its output.
    pub(crate) fn run<F, T>(&self, fut: F) -> Result<T, String>
    where
        F: Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.handle().spawn(async move {
            let _ = tx.send(fut.await);
        });
        rx.recv().map_err(|_| "postgres task ended".to_string())
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        // Dropping a runtime waits for its tasks, which a runtime's worker
        // may not do: let them go in the background.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}
