//! A shared shutdown signal, raised by SIGINT/SIGTERM or by code.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::sync::Notify;

/// Cloneable handle: every clone sees the same signal.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    raised: AtomicBool,
    notify: Notify,
}

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks everything holding this handle to stop.
    pub fn trigger(&self) {
        self.inner.raised.store(true, Ordering::SeqCst);
        self.inner.notify.notify_waiters();
    }

    pub fn is_triggered(&self) -> bool {
        self.inner.raised.load(Ordering::SeqCst)
    }

    /// Resolves once [`Shutdown::trigger`] was called.
    pub async fn wait(&self) {
        loop {
            let notified = self.inner.notify.notified();
            if self.is_triggered() {
                return;
            }
            notified.await;
        }
    }

    /// Triggers on SIGINT or SIGTERM. Call from within a tokio runtime, as
    /// early as possible: the handlers are installed before this returns,
    /// so a signal during a slow start (an index rebuild) becomes a clean
    /// stop instead of the default kill.
    pub fn trigger_on_signals(&self) {
        let shutdown = self.clone();
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            match (
                signal(SignalKind::interrupt()),
                signal(SignalKind::terminate()),
            ) {
                (Ok(mut int), Ok(mut term)) => {
                    tokio::spawn(async move {
                        tokio::select! {
                            _ = int.recv() => tracing::info!("SIGINT: draining"),
                            _ = term.recv() => tracing::info!("SIGTERM: draining"),
                        }
                        shutdown.trigger();
                    });
                }
                (int, term) => {
                    tracing::warn!(
                        sigint = int.is_ok(),
                        sigterm = term.is_ok(),
                        "cannot listen for signals; they will stop the process without draining"
                    );
                }
            }
        }
        #[cfg(not(unix))]
        tokio::spawn(async move {
            let _ = tokio::signal::ctrl_c().await;
            shutdown.trigger();
        });
    }
}
