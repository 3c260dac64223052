//! The scheduler: one OS thread that owns the [`Batcher`] and runs forward passes, so that
//! concurrent requests share them (continuous batching).
//!
//! Between two steps it takes new jobs from its channel, admits waiting sequences while the
//! batch has room, and drops sequences whose client went away (the receiving half of their
//! update channel is gone: the HTTP response was dropped on disconnect or timeout). When
//! nothing is running or waiting it blocks on the channel, so an idle server costs nothing.
//!
//! Updates go out on unbounded channels: the batch never waits for a slow client; what a
//! client has not read yet is bounded by its `max_tokens`.
//!
//! The queue is bounded by [`Capacity`]: the HTTP layer reserves one [`Slot`] per sequence
//! before submitting, and a slot frees itself when its sequence leaves, however it leaves.

use crate::metrics::Metrics;
use jarip_infer::{Batcher, Delta, Engine, FinishReason, Request};
use std::collections::{HashMap, VecDeque};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Instant;
use tokio::sync::mpsc::UnboundedSender;

/// Sequences allowed in the server at once (running + waiting).
pub struct Capacity {
    used: AtomicUsize,
    limit: usize,
}

/// One sequence's place in the server; released on drop.
pub struct Slot(Arc<Capacity>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.used.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Capacity {
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self { used: AtomicUsize::new(0), limit })
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    pub fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }

    /// `n` slots, all or none.
    pub fn try_reserve(self: &Arc<Self>, n: usize) -> Option<Vec<Slot>> {
        let mut used = self.used.load(Ordering::Acquire);
        loop {
            if used + n > self.limit {
                return None;
            }
            match self.used.compare_exchange_weak(used, used + n, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Some((0..n).map(|_| Slot(self.clone())).collect()),
                Err(now) => used = now,
            }
        }
    }
}

/// What a request hears about its sequences.
#[derive(Debug)]
pub enum Update {
    /// The sequence `index` entered the batch; `cached_tokens` of its prompt came from the
    /// prefix cache.
    Admitted { index: usize, cached_tokens: usize },
    /// One step's output for the sequence `index` (its choice index).
    Token { index: usize, delta: Delta, finished: Option<FinishReason> },
    /// The request cannot go on; `status` is the HTTP status to answer with.
    Failed { status: u16, message: String },
}

/// One sequence to generate.
pub struct Seq {
    pub index: usize,
    pub request: Request,
    pub slot: Slot,
}

/// A request's sequences (one per choice) and where their updates go.
pub struct Job {
    pub seqs: Vec<Seq>,
    pub updates: UnboundedSender<Update>,
    /// When the request arrived (latencies are measured from here).
    pub arrived: Instant,
}

enum Command {
    Submit(Job),
    /// Finish what is running and waiting, then stop.
    Shutdown,
}

/// The HTTP side's handle on the scheduler thread.
pub struct Scheduler {
    tx: Mutex<mpsc::Sender<Command>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Scheduler {
    pub fn start(engine: Engine, max_batch: usize, metrics: Arc<Metrics>) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new().name("jarip-scheduler".into()).spawn(move || {
            let batcher = engine.batcher(max_batch);
            Loop {
                engine,
                max_batch,
                batcher,
                rx,
                metrics,
                waiting: VecDeque::new(),
                running: HashMap::new(),
                next_id: 0,
            }
            .run()
        })?;
        Ok(Self { tx: Mutex::new(tx), thread: Mutex::new(Some(thread)) })
    }

    /// Hands a job to the scheduler; gives it back if the scheduler has stopped.
    pub fn submit(&self, job: Job) -> Result<(), Job> {
        let tx = self.tx.lock().unwrap_or_else(|p| p.into_inner());
        tx.send(Command::Submit(job)).map_err(|e| match e.0 {
            Command::Submit(j) => j,
            Command::Shutdown => unreachable!("only jobs are sent here"),
        })
    }

    /// Lets the running and waiting sequences finish, then stops the thread and waits for it.
    pub fn shutdown(&self) {
        let _ = self.tx.lock().unwrap_or_else(|p| p.into_inner()).send(Command::Shutdown);
        if let Some(t) = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = t.join();
        }
    }
}

struct Waiting {
    job: Arc<JobCtx>,
    index: usize,
    request: Request,
    slot: Slot,
}

struct Running {
    job: Arc<JobCtx>,
    index: usize,
    last_token: Option<Instant>,
    _slot: Slot,
}

struct JobCtx {
    updates: UnboundedSender<Update>,
    arrived: Instant,
}

struct Loop {
    engine: Engine,
    max_batch: usize,
    batcher: Batcher,
    rx: mpsc::Receiver<Command>,
    metrics: Arc<Metrics>,
    waiting: VecDeque<Waiting>,
    running: HashMap<u64, Running>,
    next_id: u64,
}

impl Loop {
    fn run(mut self) {
        let mut stopping = false;
        loop {
            if self.waiting.is_empty() && self.running.is_empty() {
                self.gauges();
                if stopping {
                    return;
                }
                // Idle: sleep until there is work.
                match self.rx.recv() {
                    Ok(c) => stopping |= self.command(c),
                    Err(_) => return,
                }
            }
            loop {
                match self.rx.try_recv() {
                    Ok(c) => stopping |= self.command(c),
                    Err(mpsc::TryRecvError::Empty) => break,
                    Err(mpsc::TryRecvError::Disconnected) => {
                        stopping = true;
                        break;
                    }
                }
            }
            self.drop_abandoned();
            self.admit();
            self.gauges();
            if !self.running.is_empty() {
                self.step();
            }
        }
    }

    /// Returns whether the command asks to stop.
    fn command(&mut self, c: Command) -> bool {
        match c {
            Command::Submit(job) => {
                let ctx = Arc::new(JobCtx { updates: job.updates, arrived: job.arrived });
                for s in job.seqs {
                    self.waiting.push_back(Waiting {
                        job: ctx.clone(),
                        index: s.index,
                        request: s.request,
                        slot: s.slot,
                    });
                }
                false
            }
            Command::Shutdown => true,
        }
    }

    /// Sequences whose client is gone leave the queue and the batch.
    fn drop_abandoned(&mut self) {
        self.waiting.retain(|w| !w.job.updates.is_closed());
        let gone: Vec<u64> =
            self.running.iter().filter(|(_, r)| r.job.updates.is_closed()).map(|(&id, _)| id).collect();
        for id in gone {
            self.batcher.cancel(id);
            self.running.remove(&id);
        }
    }

    fn admit(&mut self) {
        while self.batcher.has_room() {
            let Some(w) = self.waiting.pop_front() else { break };
            let id = self.next_id;
            self.next_id += 1;
            let prompt_tokens = w.request.prompt.len();
            match self.batcher.admit(id, w.request) {
                Ok(cached_tokens) => {
                    self.metrics.queue.observe(w.job.arrived.elapsed());
                    self.metrics.prompt_tokens.add(prompt_tokens as u64);
                    self.metrics.prefix_cache_hit_tokens.add(cached_tokens as u64);
                    let _ = w.job.updates.send(Update::Admitted { index: w.index, cached_tokens });
                    self.running.insert(id, Running { job: w.job, index: w.index, last_token: None, _slot: w.slot });
                }
                // The HTTP layer checks requests before submitting them, so this is a bug
                // or a limit it does not know; either way the request is the one at fault.
                Err(e) => {
                    let _ = w.job.updates.send(Update::Failed { status: 400, message: e.to_string() });
                }
            }
        }
    }

    fn step(&mut self) {
        self.metrics.engine_steps.add(1);
        self.metrics.engine_step_sequences.add(self.batcher.len() as u64);
        let result = catch_unwind(AssertUnwindSafe(|| self.batcher.step()));
        let events = match result {
            Ok(Ok(events)) => events,
            Ok(Err(e)) => return self.fail_all(&format!("generation failed: {e:#}")),
            Err(panic) => {
                let what = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                tracing::error!("the batch step panicked: {what}");
                // The batcher may be half-updated: start a fresh one.
                self.batcher = self.engine.batcher(self.max_batch);
                return self.fail_all(&format!("internal error during generation: {what}"));
            }
        };
        let now = Instant::now();
        for e in events {
            let Some(r) = self.running.get_mut(&e.id) else { continue };
            self.metrics.generation_tokens.add(1);
            match r.last_token {
                None => self.metrics.ttft.observe(now - r.job.arrived),
                Some(t) => self.metrics.itl.observe(now - t),
            }
            r.last_token = Some(now);
            let _ = r.job.updates.send(Update::Token { index: r.index, delta: e.delta, finished: e.finished });
            if e.finished.is_some() {
                self.running.remove(&e.id);
            }
        }
    }

    fn fail_all(&mut self, message: &str) {
        for (id, r) in self.running.drain() {
            self.batcher.cancel(id);
            let _ = r.job.updates.send(Update::Failed { status: 500, message: message.to_string() });
        }
    }

    fn gauges(&self) {
        self.metrics.prefix_cache_bytes.set(self.engine.prefix_cache_bytes() as u64);
        self.metrics.running.set(self.running.len() as u64);
        self.metrics.waiting.set(self.waiting.len() as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jarip_infer::SamplingParams;
    use jarip_model::Device;
    use jarip_model::{Gpt, ModelConfig};
    use std::time::Duration;
    use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

    fn engine() -> Engine {
        let docs = ["안녕하세요 반갑습니다. 오늘은 날씨가 좋네요.", "Hello there, general Kenobi."];
        let cfg = jarip_tokenizer::TrainConfig { vocab_size: 300, ..Default::default() };
        let tok = jarip_tokenizer::train(docs.iter().map(|d| d.to_string()), &cfg).unwrap();
        let mut mc = ModelConfig::tiny(tok.vocab_size());
        mc.max_seq_len = 64;
        Engine::new(&Gpt::new(&mc, 7, &Device::Cpu).unwrap(), tok).unwrap()
    }

    fn job(cap: &Arc<Capacity>, prompt: Vec<u32>, max_tokens: usize) -> (Job, UnboundedReceiver<Update>) {
        let (tx, rx) = unbounded_channel();
        let mut slots = cap.try_reserve(1).unwrap();
        let req = Request::new(prompt, max_tokens, SamplingParams::greedy());
        let seq = Seq { index: 0, request: req, slot: slots.pop().unwrap() };
        (Job { seqs: vec![seq], updates: tx, arrived: Instant::now() }, rx)
    }

    fn collect(rx: &mut UnboundedReceiver<Update>) -> (Vec<u32>, FinishReason) {
        let mut tokens = vec![];
        loop {
            match rx.blocking_recv().expect("update") {
                Update::Token { delta, finished, .. } => {
                    tokens.extend(delta.token);
                    if let Some(f) = finished {
                        return (tokens, f);
                    }
                }
                Update::Failed { message, .. } => panic!("{message}"),
                Update::Admitted { .. } => {}
            }
        }
    }

    #[test]
    fn concurrent_jobs_share_steps_and_match_solo_runs() {
        let e = engine();
        let metrics = Arc::new(Metrics::new("t"));
        let s = Scheduler::start(e.clone(), 8, metrics.clone()).unwrap();
        let cap = Capacity::new(16);
        let solo = e.generate(Request::new(vec![5, 6, 7], 12, SamplingParams::greedy()), |_| {}).unwrap();
        let mut rxs = vec![];
        for _ in 0..4 {
            let (j, rx) = job(&cap, vec![5, 6, 7], 12);
            s.submit(j).map_err(|_| ()).unwrap();
            rxs.push(rx);
        }
        for rx in &mut rxs {
            let (tokens, f) = collect(rx);
            assert_eq!(tokens, solo.tokens);
            assert_eq!(f, solo.finish_reason);
        }
        // 4 × 12 tokens in far fewer than 48 forward passes: the jobs were batched.
        let steps = metrics.engine_steps.get();
        assert!(steps < 30, "{steps} steps for 4 concurrent jobs");
        assert_eq!(metrics.generation_tokens.get(), 48);
        s.shutdown();
        assert_eq!(cap.used(), 0, "every slot was released");
    }

    #[test]
    fn an_abandoned_job_leaves_and_frees_its_slot() {
        let e = engine();
        let metrics = Arc::new(Metrics::new("t"));
        let s = Scheduler::start(e, 2, metrics.clone()).unwrap();
        let cap = Capacity::new(2);
        let (j, mut rx) = job(&cap, vec![5], 10_000);
        s.submit(j).map_err(|_| ()).unwrap();
        assert!(matches!(rx.blocking_recv(), Some(Update::Admitted { index: 0, cached_tokens: 0 })));
        assert!(matches!(rx.blocking_recv(), Some(Update::Token { .. })));
        assert!(cap.try_reserve(2).is_none(), "the running job holds a slot");
        drop(rx);
        let t = Instant::now();
        while cap.used() > 0 {
            assert!(t.elapsed() < Duration::from_secs(10), "the slot was never released");
            std::thread::sleep(Duration::from_millis(5));
        }
        s.shutdown();
    }

    #[test]
    fn shutdown_finishes_the_work_in_flight() {
        let e = engine();
        let s = Scheduler::start(e, 1, Arc::new(Metrics::new("t"))).unwrap();
        let cap = Capacity::new(4);
        let (j1, mut rx1) = job(&cap, vec![5], 20);
        let (j2, mut rx2) = job(&cap, vec![6], 20);
        s.submit(j1).map_err(|_| ()).unwrap();
        s.submit(j2).map_err(|_| ()).unwrap();
        s.shutdown();
        assert_eq!(collect(&mut rx1).0.len(), 20);
        assert_eq!(collect(&mut rx2).0.len(), 20);
        let (j3, _rx3) = job(&cap, vec![6], 20);
        assert!(s.submit(j3).is_err(), "a stopped scheduler refuses jobs");
    }

    #[test]
    fn capacity_is_all_or_nothing() {
        let cap = Capacity::new(3);
        let a = cap.try_reserve(2).unwrap();
        assert!(cap.try_reserve(2).is_none());
        let b = cap.try_reserve(1).unwrap();
        drop(a);
        assert_eq!(cap.used(), 1);
        drop(b);
        assert_eq!(cap.used(), 0);
    }
}
