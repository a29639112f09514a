//! Where the memory of idle connections goes: `switchyard serve` with a
//! counting allocator. `kill -USR1` prints live heap bytes and allocations,
//! glibc's own count (`mallinfo2`) and RSS, and which allocation sizes grew
//! since the last print; `kill -USR2` runs `malloc_trim(0)` first, to tell
//! live bytes from freed memory glibc keeps.
//!
//! It serves on a current-thread runtime, as `switchyard serve` does with
//! `worker_threads = 1` (the load comparison's setting). Its allocator is
//! glibc's, counted, not the binary's jemalloc: its live bytes, sizes and
//! allocation counts hold for both; its RSS and glibc figures only for a
//! build without jemalloc (`--no-default-features`). Tracing captures
//! backtraces inside the allocator: a traced size allocated while the same
//! thread prints a backtrace (a panic with `RUST_BACKTRACE`) would deadlock.
//!
//! ```sh
//! cargo build --release -j1 --example idle-mem
//! target/release/examples/idle-mem --config switchyard.toml &
//! python3 benches/load/bench.py rss ... ; kill -USR1 $!
//! ```

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicI64, Ordering::Relaxed};

/// Allocation sizes in 16-byte steps up to 64 KiB; the last bucket holds
/// everything larger.
const BUCKETS: usize = 4097;

struct Counting {
    bytes: AtomicI64,
    /// Allocations made since the start (`alloc`, `alloc_zeroed`, and
    /// `realloc` that moves or grows): per request, the difference of two
    /// reports divided by the requests between them.
    made: AtomicI64,
    live: [AtomicI64; BUCKETS],
}

fn bucket(size: usize) -> usize {
    (size.div_ceil(16)).min(BUCKETS - 1)
}

/// `IDLE_MEM_TRACE=896`: every 16th allocation of that bucket keeps where
/// it came from while it lives; a report prints the survivors' origins.
static TRACE: AtomicI64 = AtomicI64::new(-1);
static TRACED: AtomicI64 = AtomicI64::new(0);
static ORIGINS: std::sync::Mutex<Vec<(usize, String)>> = std::sync::Mutex::new(Vec::new());

thread_local! {
    static TRACING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

fn trace(ptr: *mut u8, size: usize) {
    if bucket(size) as i64 * 16 != TRACE.load(Relaxed) || TRACED.fetch_add(1, Relaxed) % 16 != 0 {
        return;
    }
    if TRACING.with(|t| t.replace(true)) {
        return;
    }
    let bt = std::backtrace::Backtrace::force_capture().to_string();
    let origin: String = bt
        .lines()
        .filter(|l| {
            !l.trim_start().starts_with("at ") && !l.contains("idle_mem") && !l.contains("alloc")
        })
        .take(6)
        .map(|l| {
            format!(
                "{}\n",
                l.char_indices().nth(160).map_or(l, |(i, _)| &l[..i])
            )
        })
        .collect();
    if let Ok(mut o) = ORIGINS.lock() {
        o.push((ptr as usize, origin));
    }
    TRACING.with(|t| t.set(false));
}

fn untrace(ptr: *mut u8, size: usize) {
    if bucket(size) as i64 * 16 != TRACE.load(Relaxed) || TRACING.with(|t| t.get()) {
        return;
    }
    TRACING.with(|t| t.set(true));
    if let Ok(mut o) = ORIGINS.lock() {
        o.retain(|(p, _)| *p != ptr as usize);
    }
    TRACING.with(|t| t.set(false));
}

fn origins() {
    TRACING.with(|t| t.set(true));
    if let Ok(o) = ORIGINS.lock() {
        let mut counts = std::collections::HashMap::<&str, usize>::new();
        for (_, origin) in o.iter() {
            *counts.entry(origin).or_default() += 1;
        }
        for (origin, n) in counts {
            eprintln!("{n} live sampled from:\n{origin}");
        }
    }
    TRACING.with(|t| t.set(false));
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            trace(p, layout.size());
            self.made.fetch_add(1, Relaxed);
            self.bytes.fetch_add(layout.size() as i64, Relaxed);
            self.live[bucket(layout.size())].fetch_add(1, Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        untrace(ptr, layout.size());
        unsafe { System.dealloc(ptr, layout) };
        self.bytes.fetch_sub(layout.size() as i64, Relaxed);
        self.live[bucket(layout.size())].fetch_sub(1, Relaxed);
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            self.made.fetch_add(1, Relaxed);
            self.bytes.fetch_add(layout.size() as i64, Relaxed);
            self.live[bucket(layout.size())].fetch_add(1, Relaxed);
        }
        p
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            untrace(ptr, layout.size());
            trace(p, new_size);
            self.made.fetch_add(1, Relaxed);
            self.bytes
                .fetch_add(new_size as i64 - layout.size() as i64, Relaxed);
            self.live[bucket(layout.size())].fetch_sub(1, Relaxed);
            self.live[bucket(new_size)].fetch_add(1, Relaxed);
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting {
    bytes: AtomicI64::new(0),
    made: AtomicI64::new(0),
    live: [const { AtomicI64::new(0) }; BUCKETS],
};

#[repr(C)]
#[derive(Debug, Default)]
struct Mallinfo2 {
    arena: usize,
    ordblks: usize,
    smblks: usize,
    hblks: usize,
    hblkhd: usize,
    usmblks: usize,
    fsmblks: usize,
    uordblks: usize,
    fordblks: usize,
    keepcost: usize,
}

extern "C" {
    fn mallinfo2() -> Mallinfo2;
    fn malloc_trim(pad: usize) -> i32;
}

fn rss_kib() -> i64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(-1)
}

fn snapshot() -> Vec<i64> {
    ALLOC.live.iter().map(|c| c.load(Relaxed)).collect()
}

fn report(previous: &mut Vec<i64>) {
    let now = snapshot();
    let info = unsafe { mallinfo2() };
    let live: i64 = now.iter().sum();
    eprintln!(
        "{} allocations made; live {} KiB in {} allocations; glibc in use {} KiB, free {} KiB, mmapped {} KiB; RSS {} KiB",
        ALLOC.made.load(Relaxed),
        ALLOC.bytes.load(Relaxed) / 1024,
        live,
        info.uordblks / 1024,
        info.fordblks / 1024,
        info.hblkhd / 1024,
        rss_kib(),
    );
    let mut grown: Vec<(usize, i64)> = now
        .iter()
        .zip(previous.iter())
        .enumerate()
        .map(|(b, (n, p))| (b, n - p))
        .filter(|&(_, d)| d != 0)
        .collect();
    grown.sort_by_key(|&(b, d)| -(d * (b as i64) * 16).abs());
    for (b, d) in grown.iter().take(16) {
        eprintln!(
            "  size <= {:>6}: {:+} allocations ({:+} KiB)",
            b * 16,
            d,
            d * (*b as i64) * 16 / 1024
        );
    }
    *previous = now;
    origins();
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let config = match (args.next().as_deref(), args.next()) {
        (Some("--config"), Some(path)) => path,
        _ => anyhow::bail!("usage: idle-mem --config FILE"),
    };
    let config = switchyard::config::Config::load(std::path::Path::new(&config))
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    if let Ok(size) = std::env::var("IDLE_MEM_TRACE") {
        TRACE.store(size.parse().unwrap_or(-1), Relaxed);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let mut previous = snapshot();
        tokio::spawn(async move {
            use tokio::signal::unix::{signal, SignalKind};
            let (Ok(mut usr1), Ok(mut usr2)) = (
                signal(SignalKind::user_defined1()),
                signal(SignalKind::user_defined2()),
            ) else {
                return;
            };
            loop {
                tokio::select! {
                    _ = usr1.recv() => {}
                    _ = usr2.recv() => {
                        let started = std::time::Instant::now();
                        let released = unsafe { malloc_trim(0) };
                        eprintln!("malloc_trim(0): {} in {:?}", if released == 1 { "released memory" } else { "released nothing" }, started.elapsed());
                    }
                }
                report(&mut previous);
            }
        });
        let listeners = switchyard::Listeners::bind(&config).await?;
        let stop = async {
            let _ = tokio::signal::ctrl_c().await;
        };
        switchyard::run(config, listeners, stop).await?;
        Ok(())
    })
}
