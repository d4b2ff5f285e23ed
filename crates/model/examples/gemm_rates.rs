//! GFLOP/s of the training step's matrix products run alone, at the shapes
//! a step of `gpt2 train` gives them, through the same kernels: the rate a
//! whole step is compared against (issue 17).
//!
//!     cargo run --release -p gpt2-model --example gemm_rates -- ROWS C LAYERS [THREADS]
//!
//! ROWS is batch x seq (4096 for the default shape's 16 x 256, 1024 for
//! 124M's 4 x 256), C the width (256 or 768), LAYERS the blocks (6 or 12).
//! The last line is the rate of all of a step's matrix products (LAYERS
//! blocks and the LM head over all ROWS, forward and backward) run alone;
//! attention's products are left out.
use gpt2_model::kernels::{
    lm_head_backward, lm_head_forward, matmul_backward, matmul_forward, Dest, LM_HEAD_CHUNK,
};
use std::time::Instant;

const VOCAB: usize = 50257;

/// Best seconds of 3 runs of `f`, after one untimed run.
fn best(mut f: impl FnMut()) -> f64 {
    f();
    (0..3)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

const USAGE: &str = "usage: gemm_rates ROWS C LAYERS [THREADS] (positive whole numbers)";

/// ROWS, C, LAYERS and THREADS (2 unless given), or why not.
fn arguments() -> Result<(usize, usize, usize, usize), String> {
    let args = std::env::args()
        .skip(1)
        .map(|a| match a.parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(format!("{a:?} is not a positive whole number; {USAGE}")),
        })
        .collect::<Result<Vec<_>, _>>()?;
    match args[..] {
        [rows, c, layers] => Ok((rows, c, layers, 2)),
        [rows, c, layers, threads] => Ok((rows, c, layers, threads)),
        _ => Err(USAGE.to_string()),
    }
}

fn main() {
    let (rows, c, layers, threads) = arguments().unwrap_or_else(|e| {
        eprintln!("{e}");
        std::process::exit(2)
    });
    let layers = layers as f64;
    if let Err(e) = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
    {
        eprintln!("cannot start {threads} threads: {e}");
        std::process::exit(1);
    }
    let fill = |n: usize| {
        (0..n)
            .map(|i| ((i * 7919 % 1000) as f32 - 500.0) * 1e-4)
            .collect::<Vec<f32>>()
    };
    println!("| matmul | shape | forward GFLOP/s | backward GFLOP/s |\n|---|---|---|---|");
    let (mut total_flops, mut total_s) = (0f64, 0f64);
    for (name, k, n) in [
        ("qkv", c, 3 * c),
        ("attn proj", c, c),
        ("fc", c, 4 * c),
        ("fc proj", 4 * c, c),
    ] {
        let (inp, w, b) = (fill(rows * k), fill(k * n), fill(n));
        let (mut out, mut partials) = (vec![0f32; rows * n], Vec::new());
        let fwd = best(|| {
            matmul_forward(
                &mut out,
                &inp,
                &w,
                &b,
                rows,
                k,
                n,
                Dest::Overwrite,
                &mut partials,
            )
        });
        let (mut dinp, mut dw, mut db) = (vec![0f32; rows * k], vec![0f32; k * n], vec![0f32; n]);
        let bwd = best(|| matmul_backward(&mut dinp, &mut dw, &mut db, &out, &inp, &w, rows, k, n));
        let flops = 2.0 * (rows * k * n) as f64;
        total_flops += 3.0 * flops * layers;
        total_s += (fwd + bwd) * layers;
        println!(
            "| {name} | {rows} x {k} x {n} | {:.0} | {:.0} |",
            flops / fwd / 1e9,
            2.0 * flops / bwd / 1e9
        );
    }
    let r = LM_HEAD_CHUNK.min(rows);
    let (h, wte) = (fill(r * c), fill(VOCAB * c));
    let mut logits = vec![0f32; r * VOCAB];
    let fwd = best(|| lm_head_forward(&mut logits, &h, &wte, r, c, VOCAB));
    let (mut dh, mut dwte) = (vec![0f32; r * c], vec![0f32; VOCAB * c]);
    let bwd = best(|| lm_head_backward(&mut dh, &mut dwte, &logits, &h, &wte, r, c, VOCAB));
    let flops = 2.0 * (r * c * VOCAB) as f64;
    println!(
        "| LM head, one chunk | {r} x {c} x {VOCAB} | {:.0} | {:.0} |",
        flops / fwd / 1e9,
        2.0 * flops / bwd / 1e9
    );
    let chunks = rows.div_ceil(r) as f64;
    total_flops += 3.0 * flops * chunks;
    total_s += (fwd + bwd) * chunks;
    println!(
        "\na step's matrix products, alone: {:.1} GFLOP in {:.3} s, {:.0} GFLOP/s",
        total_flops / 1e9,
        total_s,
        total_flops / total_s / 1e9
    );
}
