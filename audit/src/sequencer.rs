//! The sequencer: the one writer of the audit log in a process, with group commit.
//!
//! Callers hand events to a bounded queue; one task takes whatever has queued up (up to
//! `max_batch`), appends it as one transaction (one fsync) and answers every caller. Under load
//! batches grow and the cost of durability is shared; when idle an event is committed alone at
//! once. Every caller waits for its event to be durable and sealed: nothing is answered that
//! a crash could lose. Each batch seals the log's new head; every N events or T seconds the
//! task also signs a periodic checkpoint. [`Sequencer::shutdown`] drains the queue, so nothing
//! handed over before it is lost.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, Mutex};
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use crate::checkpoint::CheckpointKind;
use crate::event::{EventBody, NewEvent};
use crate::seal::Sealer;
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
    /// The head at `seq` is sealed, or found sealed.
    fn sealed(&self, _seq: u64) {}
    /// The chain does not verify up to its head (`Some`, with why), or does again (`None`).
    fn chain_broken(&self, _reason: Option<&str>) {}
}

type Reply<T> = oneshot::Sender<Result<T>>;

// Shutdown is sent once; boxing every event instead would cost an allocation per append.
#[allow(clippy::large_enum_variant)]
enum Msg {
    Append(EventBody, Reply<u64>),
    Seal(Reply<()>),
    Shutdown(oneshot::Sender<()>),
}

/// Handle to the sequencer task; cheap to clone.
#[derive(Clone)]
pub struct Sequencer {
    tx: mpsc::Sender<Msg>,
    task: Arc<Mutex<Option<JoinHandle<()>>>>,
    broken: Arc<std::sync::Mutex<Option<String>>>,
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
    /// Starts the writer task on the current tokio runtime. Without a sealer nothing is
    /// signed: the log is then an unsigned tail that verifiers refuse unless told otherwise.
    pub fn start(
        store: Arc<dyn AuditStore>,
        sealer: Option<Sealer>,
        config: SequencerConfig,
        observer: Option<Arc<dyn AuditObserver>>,
    ) -> Self {
        let (tx, rx) = mpsc::channel(config.queue.max(1));
        let broken = Arc::new(std::sync::Mutex::new(None));
        let writer = Writer {
            store,
            sealer,
            config,
            observer,
            broken: broken.clone(),
            since_checkpoint: 0,
            last_checkpoint: Instant::now(),
        };
        let task = tokio::spawn(writer.run(rx));
        Self {
            tx,
            task: Arc::new(Mutex::new(Some(task))),
            broken,
        }
    }

    /// Appends an event and waits until it is durable and sealed; returns its sequence number.
    ///
    /// # Errors
    /// [`Error::InvalidEvent`] for an event out of bounds, [`Error::Closed`] after shutdown,
    /// [`Error::ChainBroken`] when the stored chain does not verify up to its head,
    /// [`Error::Unavailable`] when the store failed to commit.
    pub async fn append(&self, event: NewEvent) -> Result<u64> {
        let body = event.into_body()?;
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Msg::Append(body, reply))
            .await
            .map_err(|_| Error::Closed)?;
        answer.await.map_err(|_| Error::Closed)?
    }

    /// Makes sure the log's head is sealed: recomputes the chain from the last signed
    /// checkpoint up to an unsealed head and seals it (what a start does before serving).
    ///
    /// # Errors
    /// [`Error::ChainBroken`] when the chain does not lead to the head, [`Error::Closed`]
    /// after shutdown, or a failure of the store.
    pub async fn seal(&self) -> Result<()> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Msg::Seal(reply))
            .await
            .map_err(|_| Error::Closed)?;
        answer.await.map_err(|_| Error::Closed)?
    }

    /// Why the chain does not verify up to its head, as last found by an append or a seal;
    /// `None` once a later batch sealed a head again.
    pub fn broken(&self) -> Option<String> {
        self.broken
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
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
    sealer: Option<Sealer>,
    config: SequencerConfig,
    observer: Option<Arc<dyn AuditObserver>>,
    broken: Arc<std::sync::Mutex<Option<String>>>,
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
                    // A gateway that found the chain broken is not ready and gets no traffic:
                    // it looks again by itself (the database restored, say).
                    let broken = self.broken.lock().unwrap_or_else(std::sync::PoisonError::into_inner).is_some();
                    if broken {
                        let _still = self.seal().await;
                        continue;
                    }
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
                    Msg::Seal(reply) => {
                        let sealed = self.seal().await;
                        let _gone = reply.send(sealed);
                    }
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
                    match msg {
                        Msg::Append(body, reply) => batch.push((body, reply)),
                        Msg::Seal(reply) => {
                            let _gone = reply.send(Err(Error::Closed));
                        }
                        Msg::Shutdown(_) => {}
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

    async fn commit(&mut self, batch: Vec<(EventBody, Reply<u64>)>) {
        let n = batch.len();
        let (bodies, replies): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
        let started = Instant::now();
        let mut attempt = 0;
        let result = loop {
            match self
                .store
                .append(bodies.clone(), self.sealer.as_ref())
                .await
            {
                Ok(stored) => break Ok(stored),
                // Retrying cannot mend a broken chain.
                Err(e @ Error::ChainBroken(_)) => break Err(e),
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
                if let Some(last) = stored.last() {
                    self.sealed(last.seq);
                }
                self.since_checkpoint += n as u64;
                for (reply, e) in replies.into_iter().zip(&stored) {
                    let _gone = reply.send(Ok(e.seq));
                }
            }
            Err(e) => {
                if let Some(o) = &self.observer {
                    o.failed(n);
                }
                self.failed(&e);
                error!(error = %e, events = n, "audit append failed; events not recorded");
                for reply in replies {
                    let _gone = reply.send(Err(match &e {
                        Error::ChainBroken(reason) => Error::ChainBroken(reason.clone()),
                        other => Error::Unavailable(other.to_string()),
                    }));
                }
            }
        }
    }

    /// A head is sealed (when there is a sealer): the chain is whole up to it.
    fn sealed(&self, seq: u64) {
        if self.sealer.is_none() {
            return;
        }
        let was_broken = self
            .broken
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
            .is_some();
        if let Some(o) = &self.observer {
            o.sealed(seq);
            if was_broken {
                o.chain_broken(None);
            }
        }
    }

    fn failed(&self, e: &Error) {
        if let Error::ChainBroken(reason) = e {
            *self
                .broken
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(reason.clone());
            if let Some(o) = &self.observer {
                o.chain_broken(Some(reason));
            }
        }
    }

    /// Seals the head if it is not sealed yet (after recomputing the chain up to it).
    async fn seal(&self) -> Result<()> {
        let Some(sealer) = &self.sealer else {
            return Ok(());
        };
        match self.store.append(Vec::new(), Some(sealer)).await {
            Ok(_) => {
                // The head the append vouched for or sealed, as the sealer remembers it.
                if let Some((seq, _)) = sealer.last() {
                    self.sealed(seq);
                }
                Ok(())
            }
            Err(e) => {
                self.failed(&e);
                Err(e)
            }
        }
    }

    /// Signs a periodic checkpoint at the sealed head: over nothing the sealer did not vouch
    /// for.
    async fn checkpoint(&mut self) {
        if self.sealer.is_none() {
            return;
        }
        let result = async {
            self.seal().await?;
            let sealer = self.sealer.as_ref().expect("checked above");
            let head = self.store.head().await?;
            let Some(seal) = head.seal.as_ref().filter(|_| head.seq > 0) else {
                return Ok(None);
            };
            if !sealer.vouches_for(&head)? {
                return Err(Error::ChainBroken(format!(
                    "the head's seal at entry {} is not valid",
                    head.seq
                )));
            }
            let cp = sealer
                .signer()
                .sign(CheckpointKind::Periodic, head.seq, seal.ts, head.hash);
            self.store.put_checkpoint(&cp).await?;
            Ok(Some(cp))
        }
        .await;
        match result {
            Ok(cp) => {
                if let Some(cp) = cp {
                    // Shipped logs keep the signed points outside the database.
                    info!(seq = cp.seq, hash = %hex::encode(cp.hash), kid = %cp.kid, "audit checkpoint signed");
                }
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
