//! Where CPU work runs: on rayon's pool. The kernels split their loops with rayon; called from a
//! thread outside the pool (a program's main thread, a server's blocking task), every parallel
//! loop is handed over to the pool while the caller sleeps until it ends — two thread wake-ups
//! per loop, thousands per training step and ~85 per decoded token. [`on_pool`] moves a whole
//! piece of work (a training step's forward and backward, a decode step) onto one of the pool's
//! threads, where each parallel loop splits on the spot and the other threads steal from it.
//! Measured on a 2-core Xeon: a bf16 training step 14 % faster, batch-1 decode 15 %.

/// Runs `f` on one of rayon's threads (at once when already on one) and returns its result.
/// The result is the same as calling `f` here: only the thread changes.
pub fn on_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() {
        f()
    } else {
        rayon::scope(|_| f())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_runs_on_the_pool_and_returns_its_result() {
        assert_eq!(rayon::current_thread_index(), None, "tests run outside the pool");
        let (inside, sum) = on_pool(|| (rayon::current_thread_index(), (0..100u64).sum::<u64>()));
        assert!(inside.is_some());
        assert_eq!(sum, 4950);
        // Nested: already on the pool, it stays on the same thread.
        let same = on_pool(|| {
            let outer = rayon::current_thread_index();
            on_pool(rayon::current_thread_index) == outer
        });
        assert!(same);
    }
}
