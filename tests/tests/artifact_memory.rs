//! Unpacking a hostile artifact archive costs memory bounded by the depth of
//! its paths, not by how many entries it has: a counting allocator measures
//! what `cordon::artifacts::stage` holds at its peak. One test in this
//! binary, so no other test's allocations are counted.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{BufReader, BufWriter, Seek};
use std::sync::atomic::{AtomicUsize, Ordering};

struct Counting;

static NOW: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(n: usize) {
    let now = NOW.fetch_add(n, Ordering::SeqCst) + n;
    PEAK.fetch_max(now, Ordering::SeqCst);
}

// SAFETY: every call is forwarded to the system allocator unchanged; the
// counters only observe sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        grew(l.size());
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        NOW.fetch_sub(l.size(), Ordering::SeqCst);
        // SAFETY: `p` came from System.alloc with this layout.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        if new > l.size() {
            grew(new - l.size());
        } else {
            NOW.fetch_sub(l.size() - new, Ordering::SeqCst);
        }
        // SAFETY: forwarded with the caller's pointer and layout.
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Writes a tar of `n` entries of `kind` at `depth` into a temp file: the
/// entries share a `depth - 1` deep chain of `seg` directories and differ
/// in their last name.
fn archive(n: usize, depth: usize, seg: &str, kind: tar::EntryType) -> std::fs::File {
    let mut f = tempfile::tempfile().unwrap();
    {
        let mut b = tar::Builder::new(BufWriter::new(&mut f));
        let chain = vec![seg; depth - 1].join("/");
        for i in 0..n {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(kind);
            h.set_mode(0o755);
            h.set_size(0);
            b.append_data(&mut h, format!("{chain}/x{i}"), std::io::empty()).unwrap();
        }
        b.into_inner().unwrap();
    }
    f.rewind().unwrap();
    f
}

/// Peak bytes allocated while staging `f`.
fn peak_staging(f: std::fs::File) -> (usize, cordon::artifacts::Staged) {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("s");
    std::fs::create_dir(&root).unwrap();
    let base = NOW.load(Ordering::SeqCst);
    PEAK.store(base, Ordering::SeqCst);
    let staged = cordon::artifacts::stage(BufReader::new(f), &root, &cordon::artifacts::StageOptions::default())
        .expect("staging works");
    (PEAK.load(Ordering::SeqCst) - base, staged)
}

#[test]
fn test_stage_memory_is_bounded_by_depth_not_entries() {
    const MB: usize = 1 << 20;
    // 20,000 directories 200 deep: the review's case scaled down (100k at 250).
    let (peak, staged) = peak_staging(archive(20_000, 200, "d", tar::EntryType::Directory));
    assert_eq!(staged.entries, 20_000);
    assert!(staged.skipped.is_empty(), "{:?}", &staged.skipped[..3.min(staged.skipped.len())]);
    assert!(peak < 8 * MB, "staging 20,000 deep directories held {} MiB at its peak", peak / MB);
    // 20,000 refused entries with 2 KB paths: the warnings are capped too.
    let (peak, staged) = peak_staging(archive(20_000, 200, "ddddddddd", tar::EntryType::Fifo));
    assert_eq!(staged.skipped.len() as u64 + staged.skipped_more, 20_000, "every skipped entry is counted");
    assert!(staged.skipped.len() <= cordon::artifacts::MAX_SKIPPED_LINES);
    assert!(peak < 8 * MB, "20,000 skipped entries held {} MiB at their peak", peak / MB);
}
