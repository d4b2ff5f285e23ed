//! A decode step allocates nothing once the buffers are sized: counted with
//! a global allocator wrapper, across all threads.
//!
//! The forward pass runs inside the rayon pool, as the binary does, so that
//! kernels start their parallel work from a worker thread.

use gpt2_model::convert::convert;
use gpt2_model::packed::Format;
use gpt2_model::{Batch, Model, Scratch};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

struct Counting;
static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::SeqCst);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::SeqCst);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// One test (not one per format): the counter is global, so tests running
/// in parallel would count each other's allocations.
#[test]
fn decode_steps_do_not_allocate() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/parity-small");
    let model = Model::load_dir(&dir).unwrap();
    // One pool for every format: a fresh pool's threads make one-time
    // registrations whenever they first steal, which a later step can hit.
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    assert_decode_allocates_nothing(&pool, &model, "f32");
    for format in Format::ALL {
        let weights = convert(model.weights(), Some(format)).unwrap();
        let packed = Model::from_parts(*model.config(), weights);
        assert_decode_allocates_nothing(&pool, &packed, format.name());
    }
}

/// Steps of warm-up, then up to `WINDOWS` measured windows of `WINDOW`
/// steps: all within the fixture's 64-position context.
const WARM_UP: u32 = 10;
const WINDOW: u32 = 10;
const WINDOWS: usize = 4;

fn assert_decode_allocates_nothing(pool: &rayon::ThreadPool, model: &Model, what: &str) {
    pool.install(|| {
        let mut cache = model.new_cache(2);
        let mut scratch = Scratch::default();
        let mut batch = Batch::default();
        batch.push(0, &[1, 2, 3, 4, 5]);
        batch.push(1, &[9]);
        model
            .next_token_logits(&batch, &mut cache, &mut scratch)
            .unwrap();
        let mut step = |t: u32| {
            batch.clear();
            batch.push(0, &[t]);
            batch.push(1, &[t + 1]);
            model
                .next_token_logits(&batch, &mut cache, &mut scratch)
                .unwrap()[0]
        };
        // Warm-up sizes the decode buffers, and lets each pool thread make
        // its one-time registrations (crossbeam's epoch state on first steal).
        for t in 0..WARM_UP {
            step(t);
        }
        // On a loaded machine a thread may first steal only after the
        // warm-up, so one-time registrations are allowed in the first
        // windows; an allocation per step, or every few steps, shows in
        // every window.
        let mut windows = Vec::new();
        for _ in 0..WINDOWS {
            let before = ALLOCATIONS.load(Ordering::SeqCst);
            for t in 0..WINDOW {
                std::hint::black_box(step(t));
            }
            windows.push(ALLOCATIONS.load(Ordering::SeqCst) - before);
            if windows.last() == Some(&0) {
                break;
            }
        }
        let one_time: usize = windows.iter().sum();
        assert!(
            windows.last() == Some(&0) && one_time <= 16,
            "{what}: allocations in successive windows of {WINDOW} decode steps: {windows:?}"
        );
    });
}
