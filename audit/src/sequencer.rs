//! The sequencer: the one writer of the audit log in a process, with group commit.
//!
//! Callers hand events to a bounded queue; one task takes whatever has queued up (up to
//! `max_batch`), appends it as one transaction (one fsync) and answers every caller. Under load
//! batches grow and the cost of durability is shared; when idle an event is committed alone at
//! once. Every N events or T seconds the task signs a checkpoint. [`Sequencer::shutdown`]
//! drains the queue, so nothing handed over before it is lost.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, Mutex};
use tokio::task::JoinHandle;
use tracing::{error, warn};

use crate::checkpoint::CheckpointSigner;
use crate::event::{EventBody, NewEvent};
use crate::store::AuditStore;
use crate::{Error, Result};

/// Tuning of the sequencer.
#[derive(Debug, Clone)]
pub struct SequencerConfig {
    /// Most events per transaction.
    pub max_batch: usize,
    /// Capacity of the queue in front of the writer; callers wait when it is full.
    pub queue: usize,
    /// Sign a checkpoint after this many events...
    pub checkpoint_every: u64,
    /// ...or after this long with new events.
    pub checkpoint_interval: Duration,
}

impl Default for SequencerConfig {
    fn default() -> Self {
        Self {
            max_batch: 1024,
            queue: 8192,
            checkpoint_every: 1000,
            checkpoint_interval: Duration::from_secs(60),
        }
    }
}

/// Told about every batch, for metrics.
pub trait AuditObserver: Send + Sync {
    /// A batch of `events` was committed in `seconds`.
    fn committed(&self, events: usize, seconds: f64);
    /// A batch of `events` could not be committed.
    fn failed(&self, events: usize);
}

// Shutdown is sent once; boxing every event instead would cost an allocation per append.
#[allow(clippy::large_enum_variant)]
enum Msg {
    Append(EventBody, Option<oneshot::Sender<Result<u64>>>),
    Shutdown(oneshot::Sender<()>),
}

/// Handle to the sequencer task; cheap to clone.
#[derive(Clone)]
pub struct Sequencer {
    tx: mpsc::Sender<Msg>,
    task: Arc<Mutex<Option<JoinHandle<()>>>>,
}

impl std::fmt::Debug for Sequencer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sequencer").finish_non_exhaustive()
    }
}

/// Retries of a failed batch before its callers get an error.
const RETRIES: [Duration; 3] = [
    Duration::from_millis(50),
    Duration::from_millis(250),
    Duration::from_secs(1),
];

impl Sequencer {
    /// Starts the writer task on the current tokio runtime.
    pub fn start(
        store: Arc<dyn AuditStore>,
        signer: Option<CheckpointSigner>,
        config: SequencerConfig,
        observer: Option<Arc<dyn AuditObserver>>,
    ) -> Self {
        let (tx, rx) = mpsc::channel(config.queue.max(1));
        let writer = Writer {
            store,
            signer,
            config,
            observer,
            since_checkpoint: 0,
            last_checkpoint: Instant::now(),
        };
        let task = tokio::spawn(writer.run(rx));
        Self {
            tx,
            task: Arc::new(Mutex::new(Some(task))),
        }
    }

    /// Appends an event and waits until it is durable; returns its sequence number.
    ///
    /// # Errors
    /// [`Error::InvalidEvent`] for an event out of bounds, [`Error::Closed`] after shutdown,
    /// [`Error::Unavailable`] when the store failed to commit.
    pub async fn append(&self, event: NewEvent) -> Result<u64> {
        let body = event.into_body()?;
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Msg::Append(body, Some(reply)))
            .await
            .map_err(|_| Error::Closed)?;
        answer.await.map_err(|_| Error::Closed)?
    }

    /// Queues an event without waiting for it to be durable (for reads that are not
    /// sensitive). A failure to commit it later is logged at ERROR.
    ///
    /// # Errors
    /// As [`append`](Self::append), minus the commit failure.
    pub async fn record(&self, event: NewEvent) -> Result<()> {
        let body = event.into_body()?;
        self.tx
            .send(Msg::Append(body, None))
            .await
            .map_err(|_| Error::Closed)
    }

    /// Commits everything queued, signs a final checkpoint and stops the task. Later appends
    /// fail with [`Error::Closed`].
    pub async fn shutdown(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Msg::Shutdown(done)).await.is_ok() {
            let _closed = wait.await;
        }
        if let Some(task) = self.task.lock().await.take() {
            if let Err(e) = task.await {
                error!(error = %e, "audit sequencer task failed");
            }
        }
    }
}

struct Writer {
    store: Arc<dyn AuditStore>,
    signer: Option<CheckpointSigner>,
    config: SequencerConfig,
    observer: Option<Arc<dyn AuditObserver>>,
    since_checkpoint: u64,
    last_checkpoint: Instant,
}

impl Writer {
    async fn run(mut self, mut rx: mpsc::Receiver<Msg>) {
        let mut tick = tokio::time::interval(
            self.config
                .checkpoint_interval
                .max(Duration::from_millis(10)),
        );
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let first = tokio::select! {
                msg = rx.recv() => msg,
                _ = tick.tick() => {
                    if self.since_checkpoint > 0 && self.last_checkpoint.elapsed() >= self.config.checkpoint_interval {
                        self.checkpoint().await;
                    }
                    continue;
                }
            };
            let Some(first) = first else {
                // Every handle dropped without shutdown: still leave a checkpoint.
                self.checkpoint().await;
                return;
            };
            let mut batch = Vec::new();
            let mut shutdown = None;
            let mut next = Some(first);
            while let Some(msg) = next.take() {
                match msg {
                    Msg::Append(body, reply) => batch.push((body, reply)),
                    Msg::Shutdown(done) => {
                        shutdown = Some(done);
                        break;
                    }
                }
                if batch.len() < self.config.max_batch {
                    next = rx.try_recv().ok();
                }
            }
            if shutdown.is_some() {
                // Drain what was queued before the shutdown request.
                rx.close();
                while let Ok(msg) = rx.try_recv() {
                    if let Msg::Append(body, reply) = msg {
                        batch.push((body, reply));
                    }
                }
            }
            for chunk in chunked(batch, self.config.max_batch) {
                self.commit(chunk).await;
            }
            if self.since_checkpoint >= self.config.checkpoint_every {
                self.checkpoint().await;
            }
            if let Some(done) = shutdown {
                if self.since_checkpoint > 0 {
                    self.checkpoint().await;
                }
                let _ignored = done.send(());
                return;
            }
        }
    }

    async fn commit(&mut self, batch: Vec<(EventBody, Option<oneshot::Sender<Result<u64>>>)>) {
        let n = batch.len();
        let (bodies, replies): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
        let started = Instant::now();
        let mut attempt = 0;
        let result = loop {
            match self.store.append(bodies.clone()).await {
                Ok(stored) => break Ok(stored),
                Err(e) if attempt < RETRIES.len() => {
                    warn!(error = %e, events = n, attempt, "audit append failed, retrying");
                    tokio::time::sleep(RETRIES[attempt]).await;
                    attempt += 1;
                }
                Err(e) => break Err(e),
            }
        };
        match result {
            Ok(stored) => {
                if let Some(o) = &self.observer {
                    o.committed(n, started.elapsed().as_secs_f64());
                }
                self.since_checkpoint += n as u64;
                for (reply, e) in replies.into_iter().zip(&stored) {
                    if let Some(reply) = reply {
                        let _gone = reply.send(Ok(e.seq));
                    }
                }
            }
            Err(e) => {
                if let Some(o) = &self.observer {
                    o.failed(n);
                }
                let unanswered = replies.iter().filter(|r| r.is_none()).count();
                error!(error = %e, events = n, unanswered, "audit append failed; events not recorded");
                for reply in replies.into_iter().flatten() {
                    let _gone = reply.send(Err(Error::Unavailable(e.to_string())));
                }
            }
        }
    }

    async fn checkpoint(&mut self) {
        let Some(signer) = &self.signer else { return };
        let result = async {
            let (seq, hash) = self.store.head().await?;
            if seq == 0 {
                return Ok(());
            }
            let ts = self
                .store
                .scan(seq - 1, 1)
                .await?
                .first()
                .map_or(0, |e| e.body.ts);
            self.store.put_checkpoint(&signer.sign(seq, ts, hash)).await
        }
        .await;
        match result {
            Ok(()) => {
                self.since_checkpoint = 0;
                self.last_checkpoint = Instant::now();
            }
            // A checkpoint at this seq may exist already (another replica signed it).
            Err(e) => warn!(error = %e, "audit checkpoint not written"),
        }
    }
}

fn chunked<T>(items: Vec<T>, size: usize) -> Vec<Vec<T>> {
    let mut out = Vec::new();
    let mut it = items.into_iter().peekable();
    while it.peek().is_some() {
        out.push(it.by_ref().take(size.max(1)).collect());
    }
    out
}
