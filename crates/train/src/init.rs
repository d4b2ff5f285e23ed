//! GPT-2's initialisation (as in nanoGPT): weights from N(0, 0.02), the
//! residual projections (`c_proj`) from N(0, 0.02 / sqrt(2 * n_layer)),
//! biases 0, LayerNorm weights 1. Normals come from SplitMix64 + Box-Muller,
//! fully specified, so a seed gives the same model on every platform.

use crate::params::views_mut;
use gpt2_model::Config;

struct Normals(u64);

impl Normals {
    fn uniform(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    }

    fn fill(&mut self, out: &mut [f32], std: f64) {
        for x in out.iter_mut() {
            let (u1, u2) = (self.uniform().max(1e-300), self.uniform());
            *x = ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos() * std) as f32;
        }
    }
}

pub fn gpt2_init(config: &Config, seed: u64) -> Vec<f32> {
    let mut params = vec![0f32; config.num_parameters()];
    let mut rng = Normals(seed);
    let proj_std = 0.02 / (2.0 * config.n_layer as f64).sqrt();
    let p = views_mut(&mut params, config);
    rng.fill(p.wte, 0.02);
    rng.fill(p.wpe, 0.02);
    for l in p.layers {
        l.ln_1_w.fill(1.0);
        l.ln_2_w.fill(1.0);
        rng.fill(l.attn_w, 0.02);
        rng.fill(l.attn_proj_w, proj_std);
        rng.fill(l.fc_w, 0.02);
        rng.fill(l.fc_proj_w, proj_std);
    }
    p.ln_f_w.fill(1.0);
    params
}
