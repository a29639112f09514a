//! Gives freed memory back to the kernel once idle connections have parked.
//!
//! A connection that parks frees what serving it took: hyper's buffers and
//! the serving future, about 10 KiB. glibc's malloc keeps freed memory for
//! reuse and returns to the kernel only what is at the top of its heap; the
//! buffers of parked connections lie between the small allocations each
//! parked connection keeps (its task, its socket's registration), so after
//! thousands of connections park, their freed buffers stay resident. At
//! 10,000 parked connections that was 24 MiB held free against 18 MiB live.
//! `malloc_trim` returns the whole free pages inside those holes
//! (`madvise`): RSS went from 48 to 35 MiB, in one call of 6 ms
//! (`benches/load/idle_mem.rs`, `kill -USR2`).
//!
//! So a task looks every [`CHECK_EVERY`] at how much freed memory glibc
//! holds (`mallinfo2`), against the least it held since the last trim, and
//! trims ([`should_trim`]) once that grew by [`TRIM_AFTER`] (a wave of
//! connections going idle), or by [`TRIM_SETTLED`] that then held still for
//! a look (a smaller wave, over). Under steady load what is freed is
//! reused at once and the task does not trim; a trim holds glibc's locks,
//! so a request that allocates meanwhile waits for it (milliseconds, once
//! after a wave). Both calls run on a blocking thread.
//!
//! Only with glibc 2.33 or later (`mallinfo2`); elsewhere the task just
//! waits for the shutdown.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// How often the freed memory glibc holds is looked at.
pub const CHECK_EVERY: Duration = Duration::from_secs(1);

/// Growth of the freed memory held, over the least held since the last
/// trim, that trims at once.
pub const TRIM_AFTER: usize = 8 << 20;

/// Growth that trims once it has held still, within [`STILL`], between two
/// looks.
pub const TRIM_SETTLED: usize = 1 << 20;

/// How much the freed memory held may move between two looks and count as
/// still.
pub const STILL: usize = 256 << 10;

/// Trims now and then until `token` is cancelled (see the module docs).
pub async fn trim_freed(token: CancellationToken) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    glibc::trim_freed(token).await;
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    token.cancelled().await;
}

/// The trimming rule: freed memory held now, `free`, against what the last
/// look saw, `last`, and the least held since the last trim, `low` (each
/// `None` before the first look).
pub fn should_trim(free: usize, last: Option<usize>, low: Option<usize>) -> bool {
    let (Some(last), Some(low)) = (last, low) else {
        return false;
    };
    let grown = free.saturating_sub(low);
    grown >= TRIM_AFTER || (grown >= TRIM_SETTLED && free.abs_diff(last) <= STILL)
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod glibc {
    use std::sync::OnceLock;
    use std::time::Instant;

    use tokio::time::MissedTickBehavior;
    use tokio_util::sync::CancellationToken;
    use tracing::debug;

    use super::{should_trim, CHECK_EVERY};

    type Mallinfo2 = unsafe extern "C" fn() -> libc::mallinfo2;

    /// glibc's `mallinfo2`, looked up when the process runs: it exists
    /// since glibc 2.33, and linking it directly would keep switchyard from
    /// building against an older one.
    fn mallinfo2() -> Option<Mallinfo2> {
        static FOUND: OnceLock<Option<Mallinfo2>> = OnceLock::new();
        *FOUND.get_or_init(|| {
            // SAFETY: a lookup by a NUL-terminated name; the result is only
            // used as the function glibc exports under that name.
            let symbol = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"mallinfo2".as_ptr()) };
            // SAFETY: glibc's mallinfo2 has exactly this signature.
            (!symbol.is_null())
                .then(|| unsafe { std::mem::transmute::<*mut libc::c_void, Mallinfo2>(symbol) })
        })
    }

    /// Freed bytes glibc holds in all its arenas; `None` with a glibc older
    /// than 2.33.
    pub fn held_free() -> Option<usize> {
        // SAFETY: mallinfo2 takes no arguments and only reads the
        // allocator's state, under its locks.
        mallinfo2().map(|mallinfo2| unsafe { mallinfo2() }.fordblks)
    }

    pub async fn trim_freed(token: CancellationToken) {
        if held_free().is_none() {
            debug!("glibc has no mallinfo2 (older than 2.33): freed memory is not trimmed");
            return token.cancelled().await;
        }
        let mut ticks = tokio::time::interval(CHECK_EVERY);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let (mut last, mut low) = (None, None::<usize>);
        loop {
            tokio::select! {
                () = token.cancelled() => return,
                _ = ticks.tick() => {}
            }
            let checked = tokio::task::spawn_blocking(move || {
                let free = held_free().unwrap_or(0);
                if !should_trim(free, last, low) {
                    return (free, None);
                }
                let started = Instant::now();
                // SAFETY: malloc_trim only releases free memory, under the
                // allocator's locks; 0 keeps no padding at the top.
                let released = unsafe { libc::malloc_trim(0) } == 1;
                let after = held_free().unwrap_or(0);
                (after, Some((free, released, started.elapsed())))
            })
            .await;
            match checked {
                Ok((free, None)) => {
                    tracing::trace!(free, ?low, "freed memory held");
                    low = Some(low.map_or(free, |low| low.min(free)));
                    last = Some(free);
                }
                Ok((free, Some((before, released, took)))) => {
                    debug!(
                        free_before = before,
                        released,
                        ?took,
                        "returned freed memory to the kernel"
                    );
                    (last, low) = (Some(free), Some(free));
                }
                // The runtime is shutting down: so is everything else.
                Err(_) => return token.cancelled().await,
            }
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn freed_memory_shows_in_what_glibc_holds() {
            // Many blocks freed in the middle of the heap, between blocks
            // that stay: the holes the trimmer is for.
            let mut kept = Vec::new();
            let mut freed = Vec::new();
            for _ in 0..2_000 {
                freed.push(vec![1u8; 8 << 10]);
                kept.push(vec![1u8; 64]);
            }
            let before = held_free().expect("glibc >= 2.33 here");
            drop(freed);
            assert!(
                held_free().expect("glibc >= 2.33 here") >= before + (8 << 20),
                "the freed 16 MiB is held"
            );
            drop(kept);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1 << 20;

    #[test]
    fn trims_after_a_wave_of_frees_not_while_memory_is_reused() {
        // First looks: nothing to compare with.
        assert!(!should_trim(30 * MIB, None, None));
        // A wave: grown by TRIM_AFTER over the least held, still growing.
        assert!(should_trim(20 * MIB, Some(15 * MIB), Some(10 * MIB)));
        // A smaller wave, still growing: wait.
        assert!(!should_trim(13 * MIB, Some(11 * MIB), Some(10 * MIB)));
        // ... and over: it held still since the last look.
        assert!(should_trim(13 * MIB, Some(13 * MIB), Some(10 * MIB)));
        // Steady reuse: what is held moves, and not above the least seen.
        assert!(!should_trim(
            10 * MIB + MIB / 2,
            Some(10 * MIB),
            Some(10 * MIB)
        ));
        // Right after a trim the least held is what was held then.
        assert!(!should_trim(24 * MIB, Some(24 * MIB), Some(24 * MIB)));
    }

    #[tokio::test]
    async fn the_task_ends_when_cancelled() {
        let token = CancellationToken::new();
        let task = tokio::spawn(trim_freed(token.clone()));
        token.cancel();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the task ended")
            .expect("the task did not panic");
    }
}
