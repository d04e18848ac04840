//! Generation off the async runtime: a [`Gate`] admits a bounded number of requests (the rest
//! get 429), lets `max_concurrent` of them generate at once on blocking threads, and counts
//! what happened; [`generate`] runs one request, sending an [`Event`] per token, and stops at the
//! next token once its receiver is gone (the client disconnected).

use crate::stop::StopMatcher;
use engine::tokenizer::TextStream;
use engine::{Model, SamplerConfig};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

/// Why generation ended (OpenAI's `finish_reason`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finish {
    /// The end-of-sequence token or a stop sequence.
    Stop,
    /// `max_tokens` reached.
    Length,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    pub finish: Finish,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    /// Text held back to the end (a partial stop sequence, an unfinished character).
    pub tail: String,
}

#[derive(Debug)]
pub enum Event {
    /// One generated token and the text it released (possibly none yet).
    Token {
        id: u32,
        text: String,
    },
    Done(Outcome),
    /// The engine failed mid-generation.
    Failed(String),
}

/// One admitted request's work.
pub struct Job {
    pub prompt: Vec<u32>,
    pub max_tokens: usize,
    pub sampling: SamplerConfig,
    pub stop: Vec<String>,
}

/// Counts for `/health`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Counts {
    pub running: usize,
    pub waiting: usize,
    pub completed: usize,
    pub cancelled: usize,
    pub rejected: usize,
}

/// Admission and concurrency: at most `max_concurrent` generating and `max_queue` more waiting.
pub struct Gate {
    slots: Arc<Semaphore>,
    max_concurrent: usize,
    limit: usize,
    admitted: AtomicUsize,
    completed: AtomicUsize,
    cancelled: AtomicUsize,
    rejected: AtomicUsize,
}

/// A request's place in the gate, given back when dropped.
pub struct Ticket {
    gate: Arc<Gate>,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.gate.admitted.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Gate {
    pub fn new(max_concurrent: usize, max_queue: usize) -> Gate {
        Gate {
            slots: Arc::new(Semaphore::new(max_concurrent)),
            max_concurrent,
            limit: max_concurrent + max_queue,
            admitted: AtomicUsize::new(0),
            completed: AtomicUsize::new(0),
            cancelled: AtomicUsize::new(0),
            rejected: AtomicUsize::new(0),
        }
    }

    /// How many requests may be running or waiting at once.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// A ticket, or None when `limit` requests are already in.
    pub fn admit(self: &Arc<Self>) -> Option<Ticket> {
        let taken = self.admitted.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| (n < self.limit).then_some(n + 1));
        if taken.is_err() {
            self.rejected.fetch_add(1, Ordering::SeqCst);
            return None;
        }
        Some(Ticket { gate: Arc::clone(self) })
    }

    pub fn counts(&self) -> Counts {
        let running = self.max_concurrent - self.slots.available_permits();
        Counts {
            running,
            waiting: self.admitted.load(Ordering::SeqCst).saturating_sub(running),
            completed: self.completed.load(Ordering::SeqCst),
            cancelled: self.cancelled.load(Ordering::SeqCst),
            rejected: self.rejected.load(Ordering::SeqCst),
        }
    }

    /// Waits for a generation slot and runs `job` on a blocking thread, its events to `tx`. A
    /// client gone while waiting frees its place without generating.
    pub fn start(self: &Arc<Self>, ticket: Ticket, model: Arc<Model>, job: Job, tx: mpsc::Sender<Event>) {
        let gate = Arc::clone(self);
        tokio::spawn(async move {
            let permit: OwnedSemaphorePermit = tokio::select! {
                permit = Arc::clone(&gate.slots).acquire_owned() => match permit {
                    Ok(p) => p,
                    Err(_) => return, // the semaphore is never closed
                },
                _ = tx.closed() => {
                    gate.cancelled.fetch_add(1, Ordering::SeqCst);
                    return;
                }
            };
            let worker = Arc::clone(&gate);
            let joined = tokio::task::spawn_blocking(move || {
                let _held = (ticket, permit);
                let counter = if generate(&model, job, &tx) { &worker.completed } else { &worker.cancelled };
                counter.fetch_add(1, Ordering::SeqCst);
            })
            .await;
            if joined.is_err() {
                gate.cancelled.fetch_add(1, Ordering::SeqCst);
            }
        });
    }
}

/// Runs `job`, sending each token as it is chosen and then `Done` (or `Failed`); false when the
/// receiver went away, which stops generation at the next token.
pub fn generate(model: &Model, job: Job, tx: &mpsc::Sender<Event>) -> bool {
    let mut text = TextStream::default();
    let mut stops = StopMatcher::new(job.stop);
    let (mut connected, mut stopped, mut count) = (true, false, 0);
    let result = model.generate_from(&job.prompt, job.max_tokens, job.sampling, |id| {
        count += 1;
        let pushed = stops.push(&text.push(model.tokenizer.text_bytes(id)));
        stopped = pushed.stopped;
        connected = tx.blocking_send(Event::Token { id, text: pushed.text }).is_ok();
        connected && !stopped
    });
    if !connected {
        return false;
    }
    let event = match result {
        Ok(tokens) => {
            let eos = tokens.last().is_some_and(|&t| Some(t) == model.tokenizer.eos_id());
            let finish = if stopped || eos || tokens.len() < job.max_tokens { Finish::Stop } else { Finish::Length };
            let tail = if stopped { String::new() } else { stops.push(&text.finish()).text + &stops.finish() };
            Event::Done(Outcome { finish, prompt_tokens: job.prompt.len(), completion_tokens: count, tail })
        }
        Err(e) => Event::Failed(e.to_string()),
    };
    tx.blocking_send(event).is_ok()
}
