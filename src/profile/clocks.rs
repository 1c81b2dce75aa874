//! What a CPU sample is worth: each sampled thread's own CPU time, shared among its
//! samples.
//!
//! A sampler says where a thread was; how much CPU time that stands for is measured
//! separately, from the thread's CPU-time clock (`CLOCK_THREAD_CPUTIME_ID` of the
//! thread, the time the scheduler charged it, which is what /proc/self/stat adds up),
//! read at every drain of the sample buffers. The samples a thread left in an interval
//! share the CPU time it used in that interval, in proportion to the periods each stands
//! for. Measured on the 2-vCPU VM with two workers and the load on both CPUs:
//!
//! - perf's software CPU clock runs ahead of the threads' CPU time there (10-15% for the
//!   workers of a debug build: it measures the wall time between perf's own switch-in
//!   and switch-out hooks, not the runtime the scheduler charges), so fixed 10 ms
//!   samples added up to 110-115% of the process's CPU time;
//! - a sample the kernel drops (ring buffer full while the draining thread waits for a
//!   CPU) or a signal the sampler cannot record leaves its interval's time to the other
//!   samples of that interval, instead of losing it.
//!
//! The time after a thread's last sample (less than a period per thread, more for one
//! starved of samples by contention) goes to that sample's stack when the window closes;
//! that of a thread without any sample carries no stack: it is counted and reported as
//! not attributed.

use std::collections::HashMap;

/// Each sampled thread's CPU-time clock and the time its samples have yet to carry.
pub struct ThreadClocks {
    threads: HashMap<i32, Clock>,
    /// Nanoseconds the samplers claimed (periods) and that the clocks gave them.
    claimed_ns: i64,
    given_ns: i64,
}

struct Clock {
    id: libc::clockid_t,
    /// The last reading, in nanoseconds; `None` once the thread has exited.
    last: Option<i64>,
    /// CPU time used since the thread's last sample, not carried by any sample yet.
    owed: i64,
}

/// One sample of a drain: its thread and the nanoseconds its sampler says it stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Claim {
    pub tid: i32,
    pub nanos: i64,
}

impl ThreadClocks {
    /// Reads the clocks of `tids` (threads of this process): the window starts here.
    pub fn start(tids: &[i32]) -> ThreadClocks {
        let threads = tids
            .iter()
            .map(|&tid| {
                let id = thread_clock(tid);
                (
                    tid,
                    Clock {
                        id,
                        last: read(id),
                        owed: 0,
                    },
                )
            })
            .collect();
        ThreadClocks {
            threads,
            claimed_ns: 0,
            given_ns: 0,
        }
    }

    /// Reads every clock: the time each thread used since the last reading is owed to
    /// its next samples. Call it just before draining the samplers' buffers.
    pub fn tick(&mut self) {
        for clock in self.threads.values_mut() {
            let Some(last) = clock.last else { continue };
            match read(clock.id) {
                Some(now) => {
                    clock.owed += (now - last).max(0);
                    clock.last = Some(now);
                }
                // The thread exited: what it used since the last reading is unknown.
                None => clock.last = None,
            }
        }
    }

    /// The nanoseconds each of `claims` (the samples of one drain) stands for: its share
    /// of its thread's CPU time owed so far, in proportion to its claim (nothing if the
    /// thread's clock has not moved: its time went to earlier samples). A thread without
    /// a clock (not in the list), or gone with nothing owed, keeps its sampler's claims.
    pub fn apportion(&mut self, claims: &[Claim]) -> Vec<i64> {
        let mut claimed: HashMap<i32, i64> = HashMap::new();
        for claim in claims {
            *claimed.entry(claim.tid).or_insert(0) += claim.nanos.max(0);
        }
        let mut owed: HashMap<i32, i64> = HashMap::new();
        for (&tid, &total) in &claimed {
            if let Some(clock) = self.threads.get_mut(&tid) {
                if total > 0 && (clock.owed > 0 || clock.last.is_some()) {
                    owed.insert(tid, std::mem::take(&mut clock.owed));
                }
            }
        }
        let mut given_so_far: HashMap<i32, (i64, i64)> = HashMap::new();
        claims
            .iter()
            .map(|claim| {
                self.claimed_ns += claim.nanos;
                let nanos = match (owed.get(&claim.tid), claimed.get(&claim.tid)) {
                    (Some(&owed), Some(&total)) => {
                        // Shares by cumulative claim, so that they add up to `owed`
                        // exactly, whatever the rounding.
                        let (claimed_before, given_before) =
                            given_so_far.entry(claim.tid).or_insert((0, 0));
                        *claimed_before += claim.nanos.max(0);
                        let due = (i128::from(owed) * i128::from(*claimed_before)
                            / i128::from(total)) as i64;
                        let share = due - *given_before;
                        *given_before = due;
                        share
                    }
                    _ => claim.nanos,
                };
                self.given_ns += nanos;
                nanos
            })
            .collect()
    }

    /// Takes, for the threads `sampled` says have a sample, the CPU time they used after
    /// their last one (the window is over): the caller gives it to that sample's stack.
    pub fn take_owed(&mut self, sampled: impl Fn(i32) -> bool) -> Vec<(i32, i64)> {
        let mut taken = Vec::new();
        for (&tid, clock) in &mut self.threads {
            if clock.owed > 0 && sampled(tid) {
                let nanos = std::mem::take(&mut clock.owed);
                self.given_ns += nanos;
                taken.push((tid, nanos));
            }
        }
        taken
    }

    /// CPU time the clocks measured that no sample carries (after each thread's last
    /// sample, or of threads without samples).
    pub fn unattributed_ns(&self) -> i64 {
        self.threads.values().map(|clock| clock.owed).sum()
    }

    /// What the samplers claimed, and what the clocks gave the same samples.
    pub fn claimed_and_given(&self) -> (i64, i64) {
        (self.claimed_ns, self.given_ns)
    }
}

/// The CPU-time clock of thread `tid` of this process, as glibc's
/// `pthread_getcpuclockid` builds it: MAKE_THREAD_CPUCLOCK(tid, CPUCLOCK_SCHED) in the
/// kernel's posix-timers.h.
pub fn thread_clock(tid: i32) -> libc::clockid_t {
    ((!(tid as u32)) << 3 | 6) as libc::clockid_t
}

/// A clock's reading in nanoseconds; `None` if it cannot be read (the thread exited).
fn read(id: libc::clockid_t) -> Option<i64> {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes a timespec into the valid local it is given; an
    // invalid clock id (a thread that exited) is an error return, not undefined behaviour.
    let status = unsafe { libc::clock_gettime(id, &mut now) };
    (status == 0).then(|| now.tv_sec * 1_000_000_000 + now.tv_nsec)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clocks(owed: &[(i32, i64)]) -> ThreadClocks {
        ThreadClocks {
            threads: owed
                .iter()
                .map(|&(tid, owed)| {
                    (
                        tid,
                        Clock {
                            id: 0,
                            last: Some(0),
                            owed,
                        },
                    )
                })
                .collect(),
            claimed_ns: 0,
            given_ns: 0,
        }
    }

    #[test]
    fn samples_share_their_threads_time_in_proportion() {
        let mut c = clocks(&[(1, 30_000_000), (2, 7)]);
        let claims = [
            Claim { tid: 1, nanos: 10 },
            Claim { tid: 2, nanos: 10 },
            Claim { tid: 1, nanos: 20 },
            Claim { tid: 3, nanos: 5 }, // no clock: keeps its claim
        ];
        let given = c.apportion(&claims);
        assert_eq!(given, [10_000_000, 7, 20_000_000, 5]);
        assert_eq!(c.unattributed_ns(), 0);
        assert_eq!(c.claimed_and_given(), (45, 30_000_012));
        // Nothing owed any more: a new sample of thread 1 is worth nothing until the
        // clock is read again.
        assert_eq!(c.apportion(&[Claim { tid: 1, nanos: 10 }]), [0]);
    }

    #[test]
    fn at_the_end_a_sampled_threads_tail_is_taken_and_an_unsampled_one_stays() {
        let mut c = clocks(&[(1, 7_000_000), (2, 3_000_000)]);
        let taken = c.take_owed(|tid| tid == 1);
        assert_eq!(taken, [(1, 7_000_000)]);
        assert_eq!(c.unattributed_ns(), 3_000_000, "thread 2 had no sample");
        assert_eq!(c.claimed_and_given(), (0, 7_000_000));
    }

    #[test]
    fn time_without_samples_waits_for_the_next_and_is_reported_until_then() {
        let mut c = clocks(&[(1, 5_000_000)]);
        assert_eq!(c.apportion(&[]), Vec::<i64>::new());
        assert_eq!(c.unattributed_ns(), 5_000_000);
        assert_eq!(c.apportion(&[Claim { tid: 1, nanos: 10 }]), [5_000_000]);
        assert_eq!(c.unattributed_ns(), 0);
    }

    #[test]
    fn shares_add_up_exactly() {
        let mut c = clocks(&[(1, 1_000_000_007)]);
        let claims = [Claim { tid: 1, nanos: 3 }; 7];
        let given: i64 = c.apportion(&claims).iter().sum();
        assert_eq!(given, 1_000_000_007);
    }

    #[test]
    fn this_thread_s_clock_advances_with_work() {
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() };
        let mut c = ThreadClocks::start(&[tid]);
        let mut x = 0u64;
        let start = std::time::Instant::now();
        while start.elapsed() < std::time::Duration::from_millis(30) {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
        c.tick();
        let owed = c.unattributed_ns();
        assert!(owed >= 10_000_000, "{owed} ns for 30 ms of spinning");
        assert_eq!(c.apportion(&[Claim { tid, nanos: 1 }]), [owed]);
    }
}
