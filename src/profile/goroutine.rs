//! `/debug/pprof/goroutine`: this server's counterpart of Go's goroutine profile.
//!
//! Go lists every goroutine with what it blocks on; here the tasks that matter are the
//! connections, and what each waits for is its state in the worker's connection table
//! (a request head, a body, the next request on an idle keep-alive connection, a write
//! to a slow client, a lingering close). The table is the worker's own (single thread,
//! no locks): the admin thread asks for a copy through the worker's [`Mailbox`], which
//! the worker's 50 ms tick answers, so there is no cost per request, only the state
//! the worker already keeps per connection.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, SystemTime};

use super::pprof::{Builder, Frame};

/// One connection task, as its worker sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskInfo {
    /// The peer's address, as the access log writes it.
    pub peer: String,
    /// Its state in the worker's connection table (`Idle`, `Head`, ...).
    pub state: &'static str,
    /// What it waits for, in words (the profile's leaf frame).
    pub waits_for: &'static str,
    pub age: Duration,
    pub requests: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

/// A worker's connection tasks at one moment.
#[derive(Clone, Debug, Default)]
pub struct WorkerTasks {
    pub draining: bool,
    /// The address of the function that runs a connection task, named in every stack
    /// by the symbolizer (as Go names a goroutine's start function).
    pub entry: u64,
    pub tasks: Vec<TaskInfo>,
}

impl WorkerTasks {
    /// How many tasks wait for each thing, by what they wait for.
    fn counts_by_state(&self) -> std::collections::BTreeMap<&'static str, i64> {
        let mut counts = std::collections::BTreeMap::new();
        for task in &self.tasks {
            *counts.entry(task.waits_for).or_insert(0) += 1;
        }
        counts
    }
}

/// How the admin thread asks a worker for its connection table.
#[derive(Default)]
pub struct Mailbox {
    wanted: AtomicBool,
    reply: Mutex<Option<WorkerTasks>>,
    answered: Condvar,
}

impl Mailbox {
    /// On the worker, every tick: whether a copy is wanted (one relaxed load).
    pub fn wanted(&self) -> bool {
        self.wanted.load(Ordering::Relaxed)
    }

    /// On the worker: hands over the copy. `try_lock`: a worker never waits for the
    /// admin thread; if the lock is held, the copy is offered again next tick.
    pub fn answer(&self, conns: WorkerTasks) {
        if let Ok(mut reply) = self.reply.try_lock() {
            *reply = Some(conns);
            self.wanted.store(false, Ordering::Relaxed);
            self.answered.notify_all();
        }
    }

    /// On the admin thread: asks and waits (bounded) for the answer.
    pub fn ask(&self, limit: Duration) -> Option<WorkerTasks> {
        let reply = self.reply.lock().ok()?;
        let mut reply = reply;
        *reply = None;
        self.wanted.store(true, Ordering::Relaxed);
        let (mut reply, _) = self
            .answered
            .wait_timeout_while(reply, limit, |r| r.is_none())
            .ok()?;
        reply.take()
    }
}

/// Every worker's connections (`None` for a worker that did not answer in time).
pub fn collect(mailboxes: &[std::sync::Arc<Mailbox>]) -> Vec<Option<WorkerTasks>> {
    mailboxes
        .iter()
        .map(|m| m.ask(Duration::from_secs(2)))
        .collect()
}

/// The pprof profile: one sample per (worker, state), valued by its connection count,
/// with the stack `state ← worker N ← the task's entry function`, so that `go tool
/// pprof -top` lists the states and `-traces` the workers.
pub fn pprof(workers: &[Option<WorkerTasks>]) -> std::io::Result<Vec<u8>> {
    let mut builder = Builder::new(&[("goroutine", "count")], ("goroutine", "count"), 1);
    builder.time(SystemTime::now(), Duration::ZERO);
    builder.comment("connection tasks of every worker, by what each waits for");
    for (id, worker) in workers.iter().enumerate() {
        let Some(worker) = worker else {
            builder.comment(&format!("worker {id} did not answer in time"));
            continue;
        };
        let counts = worker.counts_by_state();
        let worker_name = format!("worker {id}");
        for (state, count) in counts {
            let mut leaf = state.to_owned();
            if worker.draining {
                leaf.push_str(" (draining)");
            }
            let stack = [
                Frame::Named {
                    name: leaf,
                    file: "",
                },
                Frame::Named {
                    name: worker_name.clone(),
                    file: "",
                },
                // The entry function's own address: an exact pc, not a return address.
                Frame::Code {
                    address: worker.entry,
                },
            ];
            let labels = [("worker", worker_name.as_str()), ("state", state)];
            builder.add_sample(&stack, &[count], &labels);
        }
    }
    builder.gzip()
}

/// `?debug=1`: per worker the counts by state, then one line per connection.
pub fn text(workers: &[Option<WorkerTasks>]) -> String {
    let total: usize = workers.iter().flatten().map(|w| w.tasks.len()).sum();
    let mut out = format!("connection tasks: total {total}\n");
    for (id, worker) in workers.iter().enumerate() {
        let Some(worker) = worker else {
            out.push_str(&format!("\nworker {id}: did not answer in time\n"));
            continue;
        };
        let counts = worker.counts_by_state();
        let summary: Vec<String> = counts
            .iter()
            .map(|(state, n)| format!("{n} {state}"))
            .collect();
        let draining = if worker.draining { ", draining" } else { "" };
        out.push_str(&format!(
            "\nworker {id}: {} connection(s){draining}: {}\n",
            worker.tasks.len(),
            summary.join(", ")
        ));
        for task in &worker.tasks {
            out.push_str(&format!(
                "  peer {}  state {}  age {:.1}s  requests {}  bytes in {} out {}\n",
                task.peer,
                task.state,
                task.age.as_secs_f64(),
                task.requests,
                task.bytes_in,
                task.bytes_out
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEAD: &str = "waiting for a request head";
    const IDLE: &str = "idle between requests (keep-alive)";

    fn conn(waits_for: &'static str, requests: u64) -> TaskInfo {
        TaskInfo {
            peer: "127.0.0.1:4000".into(),
            state: if waits_for == IDLE { "Idle" } else { "Other" },
            waits_for,
            age: Duration::from_millis(1500),
            requests,
            bytes_in: 10,
            bytes_out: 20,
        }
    }

    #[test]
    fn text_counts_states_and_lists_connections() {
        let workers = [
            Some(WorkerTasks {
                draining: false,
                entry: 0,
                tasks: vec![conn(IDLE, 3), conn(IDLE, 1), conn(HEAD, 0)],
            }),
            None,
        ];
        let text = text(&workers);
        assert!(text.starts_with("connection tasks: total 3\n"), "{text}");
        assert!(
            text.contains("worker 0: 3 connection(s): 2 idle between requests (keep-alive), 1 waiting for a request head"),
            "{text}"
        );
        assert!(text
            .contains("peer 127.0.0.1:4000  state Idle  age 1.5s  requests 3  bytes in 10 out 20"));
        assert!(text.contains("worker 1: did not answer in time"));
    }

    #[test]
    fn the_mailbox_hands_a_copy_across_threads() {
        let mailbox = std::sync::Arc::new(Mailbox::default());
        let worker = mailbox.clone();
        // As the worker's tick does: look every few milliseconds, and answer again if the
        // admin thread held the lock the first time (`answer` only tries it).
        let answering = std::thread::spawn(move || {
            let mut answered = false;
            for _ in 0..2000 {
                if worker.wanted() {
                    worker.answer(WorkerTasks {
                        draining: true,
                        entry: 0,
                        tasks: vec![conn("writing responses", 7)],
                    });
                    answered = true;
                } else if answered {
                    return true;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            false
        });
        let reply = mailbox.ask(Duration::from_secs(20)).expect("an answer");
        assert!(answering.join().unwrap());
        assert!(reply.draining);
        assert_eq!(reply.tasks, [conn("writing responses", 7)]);
        assert!(!mailbox.wanted());
    }
}
