//! AdamW exactly as `torch.optim.AdamW` computes it (decoupled weight decay,
//! bias-corrected moments, eps added to the corrected root), and gradient
//! clipping as `torch.nn.utils.clip_grad_norm_`.

pub struct AdamW {
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    m: Vec<f32>,
    v: Vec<f32>,
    step: u64,
    /// (length, decayed) of each tensor in buffer order.
    tensors: Vec<(usize, bool)>,
}

impl AdamW {
    /// The project's settings: beta1 0.9, beta2 0.95, eps 1e-8, decay 0.1
    /// on the tensors marked `decayed`.
    pub fn new(sizes: &[usize], decayed: &[bool]) -> AdamW {
        let n = sizes.iter().sum();
        AdamW {
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.1,
            m: vec![0.0; n],
            v: vec![0.0; n],
            step: 0,
            tensors: sizes.iter().copied().zip(decayed.iter().copied()).collect(),
        }
    }

    pub fn step_count(&self) -> u64 {
        self.step
    }

    /// The state to save: step, then both moments.
    pub fn state(&self) -> (u64, &[f32], &[f32]) {
        (self.step, &self.m, &self.v)
    }

    /// Restores a saved state; the moments must match the parameter count.
    pub fn restore(&mut self, step: u64, m: Vec<f32>, v: Vec<f32>) -> Result<(), String> {
        if m.len() != self.m.len() || v.len() != self.v.len() {
            return Err(format!(
                "optimizer state holds {} moments, the model has {} parameters",
                m.len(),
                self.m.len()
            ));
        }
        (self.step, self.m, self.v) = (step, m, v);
        Ok(())
    }

    /// One update of `params` with `grads` at learning rate `lr`.
    pub fn update(&mut self, params: &mut [f32], grads: &[f32], lr: f32) {
        self.step += 1;
        let t = self.step as i32;
        let bc1 = 1.0 - (self.beta1 as f64).powi(t);
        let bc2_sqrt = (1.0 - (self.beta2 as f64).powi(t)).sqrt() as f32;
        let step_size = (lr as f64 / bc1) as f32;
        let (b1, b2, eps) = (self.beta1, self.beta2, self.eps);
        let mut at = 0;
        for &(len, decayed) in &self.tensors {
            let range = at..at + len;
            at += len;
            let decay = if decayed {
                1.0 - lr * self.weight_decay
            } else {
                1.0
            };
            let (p, g) = (&mut params[range.clone()], &grads[range.clone()]);
            let (m, v) = (&mut self.m[range.clone()], &mut self.v[range]);
            for i in 0..len {
                p[i] *= decay;
                m[i] += (g[i] - m[i]) * (1.0 - b1);
                v[i] = v[i] * b2 + g[i] * g[i] * (1.0 - b2);
                let denom = v[i].sqrt() / bc2_sqrt + eps;
                p[i] -= step_size * m[i] / denom;
            }
        }
    }
}

/// Scales `grads` so their global L2 norm is at most `max_norm`; returns the
/// norm before clipping.
pub fn clip_grad_norm(grads: &mut [f32], max_norm: f32) -> f32 {
    let norm = grads
        .iter()
        .map(|&g| g as f64 * g as f64)
        .sum::<f64>()
        .sqrt() as f32;
    let coef = (max_norm / (norm + 1e-6)).min(1.0);
    if coef < 1.0 {
        grads.iter_mut().for_each(|g| *g *= coef);
    }
    norm
}
